"""User administration (role admin). The gateway checks the role, and auth checks it again."""

from __future__ import annotations

import json
import secrets
from typing import Annotated

from fastapi import APIRouter, Body, Query
from genai.auth.v1 import auth_pb2

from genai_gateway.clients import Auth
from genai_gateway.errors import ApiError
from genai_gateway.schemas import (
    PasswordReset,
    PasswordResetOut,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    UserPatch,
)
from genai_gateway.security import AdminUser, Token

router = APIRouter(prefix="/api/v1/users", tags=["users"])


def user_out(user: auth_pb2.User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
        limits=json.loads(user.limits_json or "{}"),
        source="ldap" if user.source == "ldap" else "local",
        directory_groups=list(user.directory_groups),
        directory_limits=json.loads(user.directory_limits_json or "{}"),
        directory_checked_at=user.directory_checked_at,
    )


@router.post("", response_model=UserCreated, status_code=201)
async def create_user(body: UserCreate, _: AdminUser, token: Token, auth: Auth) -> UserCreated:
    generated = not body.password
    password = body.password or secrets.token_urlsafe(15)
    user = await auth.create_user(
        auth_pb2.CreateUserRequest(username=body.username, password=password, role=body.role), token
    )
    return UserCreated(**user_out(user).model_dump(), password=password if generated else None)


@router.get("", response_model=UserList)
async def list_users(
    _: AdminUser,
    token: Token,
    auth: Auth,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> UserList:
    page = await auth.list_users(auth_pb2.ListUsersRequest(page_size=limit, page_token=cursor), token)
    return UserList(users=[user_out(u) for u in page.users], next_cursor=page.next_page_token or None)


@router.patch("/{username}", response_model=UserOut)
async def update_user(username: str, body: UserPatch, admin: AdminUser, token: Token, auth: Auth) -> UserOut:
    """Disable or enable a user, change their role and/or replace their limit overrides."""
    user: auth_pb2.User | None = None
    # Up to three calls, not one transaction. What auth would refuse of an admin's own account is refused
    # here first, before anything changed; the limits were validated here already.
    if username.lower() == admin.username.lower():
        if body.disabled:
            raise ApiError(400, "you cannot disable your own account")
        if body.role == "user":
            raise ApiError(400, "you cannot remove your own admin role")
    if body.role is not None:
        user = await auth.set_user_role(auth_pb2.SetUserRoleRequest(username=username, role=body.role), token)
    if body.disabled is not None:
        user = await auth.set_user_disabled(
            auth_pb2.SetUserDisabledRequest(username=username, disabled=body.disabled), token
        )
    if "limits" in body.model_fields_set:
        user = await auth.set_user_limits(
            auth_pb2.SetUserLimitsRequest(username=username, limits_json=body.limits_json()), token
        )
    assert user is not None  # UserPatch lets no body through that changes nothing
    return user_out(user)


@router.post("/{username}/password", response_model=PasswordResetOut)
async def reset_password(
    username: str,
    _: AdminUser,
    token: Token,
    auth: Auth,
    body: Annotated[PasswordReset | None, Body()] = None,
) -> PasswordResetOut:
    """Set a new password (generated and returned once when none is given); the user's sessions end."""
    reset = await auth.reset_password(
        auth_pb2.ResetPasswordRequest(username=username, new_password=body.password if body else ""), token
    )
    return PasswordResetOut(**user_out(reset.user).model_dump(), password=reset.password or None)
