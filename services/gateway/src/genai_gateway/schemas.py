"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TokenRequest(BaseModel):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (a scheme name, not a secret)
    role: str
    refresh_token: str
    expires_in: int


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=4096)


class LogoutRequest(BaseModel):
    refresh_token: str = Field("", max_length=4096)


class PasswordChange(BaseModel):
    old_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class AskRequest(BaseModel):
    # Length is checked by the service against its setting, with a message that names the limit.
    prompt: str
    max_tokens: int | None = Field(None, description="1 up to the server's limit; default 256")
    stream: bool = Field(False, description="answer as server-sent events while the model writes")
    conversation_id: str | None = Field(
        None, max_length=64, description="continue this conversation: its earlier turns are sent as context"
    )
    model: str = Field("", max_length=256, description="empty: the server's default model")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AskResponse(BaseModel):
    response: str
    source: Literal["model", "cache"]
    model: str
    usage: Usage
    conversation_id: str | None = None
    request_id: str
    finish_reason: str = ""


class Me(BaseModel):
    id: str
    username: str
    role: str


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    # Empty: the service generates one and returns it once.
    password: str = Field("", max_length=1024)
    role: Literal["user", "admin"] = "user"


class UserOut(BaseModel):
    id: str
    username: str
    role: str
    disabled: bool
    created_at: int


class UserCreated(UserOut):
    # Present only when the service generated the password.
    password: str | None = None


class UserList(BaseModel):
    users: list[UserOut]
    next_cursor: str | None = None


class UserPatch(BaseModel):
    disabled: bool


class MessageOut(BaseModel):
    id: str
    prompt: str
    response: str
    source: str
    model: str
    usage: Usage
    latency_ms: int
    request_id: str
    created_at_ms: int


class ConversationSummary(BaseModel):
    id: str
    title: str
    created_at_ms: int
    updated_at_ms: int
    message_count: int


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
    next_cursor: str | None = None


class ConversationOut(ConversationSummary):
    messages: list[MessageOut]
