"""User administration (role admin). The gateway checks the role, and auth checks it again."""

from __future__ import annotations

import json
import secrets
from typing import Annotated

import grpc
from fastapi import APIRouter, Body, Query, Request
from genai.auth.v1 import auth_pb2

from genai_common.grpc_client import call_metadata
from genai_gateway.errors import ApiError, from_grpc
from genai_gateway.schemas import (
    PasswordReset,
    PasswordResetOut,
    UserCreate,
    UserCreated,
    UserList,
    UserOut,
    UserPatch,
)
from genai_gateway.security import AdminUser, bearer_token

router = APIRouter(prefix="/api/v1/users", tags=["users"])
AUTH = "the authentication service"


def _as_caller(request: Request) -> tuple[tuple[str, str], ...]:
    return call_metadata(("authorization", f"Bearer {bearer_token(request)}"))


def user_out(user: auth_pb2.User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=user.created_at,
        limits=json.loads(user.limits_json or "{}"),
    )


@router.post("", response_model=UserCreated, status_code=201)
async def create_user(body: UserCreate, _: AdminUser, request: Request) -> UserCreated:
    generated = not body.password
    password = body.password or secrets.token_urlsafe(15)
    try:
        user = await request.app.state.backends.auth.CreateUser(
            auth_pb2.CreateUserRequest(username=body.username, password=password, role=body.role),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=_as_caller(request),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    return UserCreated(**user_out(user).model_dump(), password=password if generated else None)


@router.get("", response_model=UserList)
async def list_users(
    _: AdminUser,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> UserList:
    try:
        page = await request.app.state.backends.auth.ListUsers(
            auth_pb2.ListUsersRequest(page_size=limit, page_token=cursor),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=_as_caller(request),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    return UserList(users=[user_out(u) for u in page.users], next_cursor=page.next_page_token or None)


@router.patch("/{username}", response_model=UserOut)
async def update_user(username: str, body: UserPatch, admin: AdminUser, request: Request) -> UserOut:
    """Disable or enable a user, change their role and/or replace their limit overrides."""
    auth = request.app.state.backends.auth
    timeout = request.app.state.settings.auth_timeout_s
    metadata = _as_caller(request)
    user: auth_pb2.User | None = None
    # Up to three calls, not one transaction. What auth would refuse of an admin's own account is refused
    # here first, before anything changed; the limits were validated here already.
    if username.lower() == admin.username.lower():
        if body.disabled:
            raise ApiError(400, "you cannot disable your own account")
        if body.role == "user":
            raise ApiError(400, "you cannot remove your own admin role")
    try:
        if body.role is not None:
            user = await auth.SetUserRole(
                auth_pb2.SetUserRoleRequest(username=username, role=body.role),
                timeout=timeout,
                metadata=metadata,
            )
        if body.disabled is not None:
            user = await auth.SetUserDisabled(
                auth_pb2.SetUserDisabledRequest(username=username, disabled=body.disabled),
                timeout=timeout,
                metadata=metadata,
            )
        if "limits" in body.model_fields_set:
            user = await auth.SetUserLimits(
                auth_pb2.SetUserLimitsRequest(username=username, limits_json=body.limits_json()),
                timeout=timeout,
                metadata=metadata,
            )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    assert user is not None  # UserPatch lets no body through that changes nothing
    return user_out(user)


@router.post("/{username}/password", response_model=PasswordResetOut)
async def reset_password(
    username: str,
    _: AdminUser,
    request: Request,
    body: Annotated[PasswordReset | None, Body()] = None,
) -> PasswordResetOut:
    """Set a new password (generated and returned once when none is given); the user's sessions end."""
    try:
        reset = await request.app.state.backends.auth.ResetPassword(
            auth_pb2.ResetPasswordRequest(username=username, new_password=body.password if body else ""),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=_as_caller(request),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    return PasswordResetOut(**user_out(reset.user).model_dump(), password=reset.password or None)
