"""API keys for scripts and services: create (shown once), list and revoke; admins for anyone."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from genai.auth.v1 import auth_pb2
from pydantic import BaseModel, Field

from genai_gateway.clients import Auth
from genai_gateway.security import CurrentUser, Token

router = APIRouter(prefix="/api/v1/keys", tags=["api keys"])


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    # Empty: the caller. Another user: admins only.
    owner: str = Field("", max_length=64)
    expires_in_days: int | None = Field(
        None, ge=1, le=3650, description="lifetime in days; left out: the server's default (90 days)"
    )
    never_expires: bool = Field(False, description="a key that never expires, only when asked for explicitly")
    scope: Literal["user", "admin"] = Field(
        "user", description='"admin" (an admin\'s own key only) acts with the admin role; "user" never does'
    )
    password: str = Field(
        "",
        max_length=1024,
        description="your password; needed unless you signed in with it in the last few minutes",
    )


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    owner: str
    created_at: int
    last_used_at: int
    expires_at: int
    revoked: bool
    scope: str


class KeyCreated(KeyOut):
    # The whole key: shown in this answer only, stored nowhere in clear.
    key: str


class KeyList(BaseModel):
    keys: list[KeyOut]
    next_cursor: str | None = None


def key_out(key: auth_pb2.ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        owner=key.owner_username,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked=key.revoked,
        scope=key.scope or "user",
    )


@router.post("", response_model=KeyCreated, status_code=201)
async def create_key(body: KeyCreate, _: CurrentUser, token: Token, auth: Auth) -> KeyCreated:
    created = await auth.create_api_key(
        auth_pb2.CreateApiKeyRequest(
            name=body.name,
            owner_username=body.owner,
            expires_in_s=(body.expires_in_days or 0) * 86400,
            never_expires=body.never_expires,
            scope=body.scope,
            password=body.password,
        ),
        token,
    )
    return KeyCreated(**key_out(created.key).model_dump(), key=created.secret)


@router.get("", response_model=KeyList)
async def list_keys(
    _: CurrentUser,
    token: Token,
    auth: Auth,
    owner: Annotated[str, Query(max_length=64, description="admins: a username, or * for everyone")] = "",
    include_revoked: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> KeyList:
    page = await auth.list_api_keys(
        auth_pb2.ListApiKeysRequest(
            owner_username=owner, include_revoked=include_revoked, page_size=limit, page_token=cursor
        ),
        token,
    )
    return KeyList(keys=[key_out(k) for k in page.keys], next_cursor=page.next_page_token or None)


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: str, _: CurrentUser, token: Token, auth: Auth) -> KeyOut:
    revoked = await auth.revoke_api_key(auth_pb2.RevokeApiKeyRequest(id=key_id), token)
    return key_out(revoked.key)
