"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# Per-user limit overrides, as auth stores them (genai_auth.limits): a limit is 1 to MAX_LIMIT, or
# UNLIMITED; a limit left out follows the role's default from the gateway's settings.
UNLIMITED = -1
MAX_LIMIT = 10**9


def _json_integer(value: Any) -> Any:
    """An integer as JSON (and the OpenAPI document) has it: 5 or 5.0, never true, "5" or 5.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


# For the integers of strict models: JSON has one kind of number, so an integral 5.0 is the integer 5.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


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


# Where a conversation was started: the web chat (or another chat client), or an API call.
Origin = Literal["chat", "api"]


class AskRequest(BaseModel):
    # Strict, as the OpenAPI document types it: "stream": 0 or "max_tokens": "5" is a mistake to report.
    model_config = ConfigDict(strict=True)

    # Length is checked by the service against its setting, with a message that names the limit.
    prompt: str
    max_tokens: JsonInt | None = Field(None, description="1 up to the server's limit; default 256")
    stream: bool = Field(False, description="answer as server-sent events while the model writes")
    conversation_id: str | None = Field(
        None, max_length=64, description="continue this conversation: its earlier turns are sent as context"
    )
    model: str = Field("", max_length=256, description="empty: the server's default model")
    origin: Origin = Field(
        "api",
        description='a new conversation\'s place: "chat" (listed in the web chat) or "api" (a script\'s call, '
        "kept for audit and usage and listed apart); ignored when continuing a conversation",
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


SIMILARITY = (
    "with source cache: null for the same request (exact or normalised), else the cosine similarity of "
    "this question and the similar one whose answer this is (the similar-request layer)"
)


class AskResponse(BaseModel):
    response: str
    source: Literal["model", "cache"]
    model: str
    usage: Usage
    conversation_id: str | None = None
    request_id: str
    finish_reason: str = ""
    similarity: float | None = Field(None, ge=0, le=1, description=SIMILARITY)


class Me(BaseModel):
    id: str
    username: str
    role: str


class UserCreate(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    # Empty: the service generates one and returns it once.
    password: str = Field("", max_length=1024)
    role: Literal["user", "admin"] = "user"


def _limit(value: int) -> int:
    # 0 is refused rather than read as "no access": disabling the user is the way to deny access.
    if value != UNLIMITED and not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"must be 1 to {MAX_LIMIT}, or {UNLIMITED} for unlimited")
    return value


# Strict: true, 1.5 or "10" are mistakes, not limits.
Limit = Annotated[JsonInt, AfterValidator(_limit)]


class UserLimits(BaseModel):
    """A user's limit overrides; a limit left out (or null) follows the role's default."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    concurrent_requests: Limit | None = None
    tokens_per_day: Limit | None = None


class UserOut(BaseModel):
    id: str
    username: str
    role: str
    disabled: bool
    created_at: int
    # An admin's overrides only, e.g. {"requests_per_minute": 60}; {}: the role's (or groups') limits apply.
    limits: dict[str, int]
    source: Literal["local", "ldap"] = Field("local", description="local password, or the LDAP/AD directory")
    directory_groups: list[str] = Field(
        default_factory=list, description="a directory user's mapped groups that gave the role and limits"
    )
    directory_limits: dict[str, int] = Field(
        default_factory=dict, description="the limits those groups give; `limits` wins key by key"
    )
    directory_checked_at: int = Field(0, description="when the directory was last asked; 0: never")


class UserCreated(UserOut):
    # Present only when the service generated the password.
    password: str | None = None


class PasswordReset(BaseModel):
    """An admin's password reset; an empty password: the service generates one."""

    model_config = ConfigDict(extra="forbid")

    password: str = Field("", max_length=1024)


class PasswordResetOut(UserOut):
    # Present only when the service generated the password: shown this once.
    password: str | None = None


class UserList(BaseModel):
    users: list[UserOut]
    next_cursor: str | None = None


class UserPatch(BaseModel):
    """Changes to one user: any of `disabled`, `role` and `limits`."""

    # Forbidden extras: a misspelt field must not look like a change that was made. Strict, as the OpenAPI
    # document types it: "disabled": 0 is a mistake, not false.
    model_config = ConfigDict(extra="forbid", strict=True)

    disabled: bool | None = None
    role: Literal["user", "admin"] | None = None
    # Replaces the user's overrides as a whole; null or {} removes them all.
    limits: UserLimits | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> UserPatch:
        if not self.model_fields_set & {"disabled", "role", "limits"}:
            raise ValueError("give at least one of disabled, role and limits")
        if "disabled" in self.model_fields_set and self.disabled is None:
            raise ValueError("disabled must be true or false")
        if "role" in self.model_fields_set and self.role is None:
            raise ValueError("role must be 'user' or 'admin'")
        return self

    def limits_json(self) -> str:
        """The new overrides as SetUserLimits takes them."""
        return self.limits.model_dump_json(exclude_none=True) if self.limits else "{}"


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
    origin: Origin = Field(description='"chat": started in a chat; "api": by an API call that asked for none')


class ConversationList(BaseModel):
    conversations: list[ConversationSummary]
    next_cursor: str | None = None


class ConversationOut(ConversationSummary):
    messages: list[MessageOut]


class ConversationRename(BaseModel):
    # Whitespace is collapsed by the history service, which checks 1 to 200 characters again after that.
    title: str = Field(min_length=1, max_length=200)


class SearchHit(BaseModel):
    conversation_id: str
    conversation_title: str
    message_id: str
    snippet: str = Field(description="plain text; each match is between \u00ab and \u00bb")
    created_at_ms: int


class SearchResults(BaseModel):
    hits: list[SearchHit]
    next_cursor: str | None = None


class AdminConversationSummary(ConversationSummary):
    owner_id: str


class AdminConversationList(BaseModel):
    conversations: list[AdminConversationSummary]
    next_cursor: str | None = None


class AdminConversationOut(AdminConversationSummary):
    messages: list[MessageOut]


class AuditEventOut(BaseModel):
    id: int
    at: str = Field(description="ISO 8601, UTC")
    at_ms: int
    actor_id: str
    actor_username: str
    action: str
    target_owner_id: str | None
    target_conversation_id: str | None
    request_id: str
    details: dict[str, Any]


class AuditEventList(BaseModel):
    events: list[AuditEventOut]
    next_cursor: str | None = None


class UsageRowOut(BaseModel):
    day: str
    owner_id: str
    requests: int
    prompt_tokens: int = Field(description="tokens the model processed; answers from the cache count none")
    completion_tokens: int
    cache_hits: int


class UsageReportOut(BaseModel):
    rows: list[UsageRowOut]
    next_cursor: str | None = None


class SimilarLayerOut(BaseModel):
    enabled: bool = Field(description="answers for similar questions are given (every gateway)")
    threshold: float = Field(description="cosine similarity from which a question's answer serves another")
    default_threshold: float = Field(description="the threshold of the settings, chosen on the labelled set")
    model_ready: bool = Field(description="this gateway has loaded its embedding model")


class SimilarLayerPatch(BaseModel):
    enabled: bool | None = None
    threshold: float | None = Field(None, ge=0.5, le=1.0, description="0.5 to 1; higher answers fewer")
