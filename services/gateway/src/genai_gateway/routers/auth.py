"""Logging in and out: the seeds' POST /token, plus refresh, logout and password change."""

from __future__ import annotations

import grpc
from fastapi import APIRouter, Request
from genai.auth.v1 import auth_pb2
from pydantic import ValidationError

from genai_common.grpc_client import call_metadata
from genai_gateway.errors import ApiError, from_grpc
from genai_gateway.schemas import (
    LogoutRequest,
    Me,
    PasswordChange,
    RefreshRequest,
    TokenRequest,
    TokenResponse,
)
from genai_gateway.security import CurrentUser, bearer_token

router = APIRouter(tags=["auth"])
AUTH = "the authentication service"


def _token_response(pair: auth_pb2.TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access_token,
        token_type=pair.token_type or "bearer",
        role=pair.role,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


async def _credentials(request: Request) -> TokenRequest:
    """JSON {username, password} as in the seeds, or the OAuth2 password form that Swagger UI sends."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return TokenRequest(
                username=str(form.get("username", "")), password=str(form.get("password", ""))
            )
        return TokenRequest.model_validate_json(await request.body())
    except ValidationError:
        raise ApiError(422, "send username and password, as JSON or as an OAuth2 password form") from None


@router.post(
    "/token",
    response_model=TokenResponse,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": TokenRequest.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()},
            },
            "required": True,
        }
    },
)
async def login(request: Request) -> TokenResponse:
    creds = await _credentials(request)
    client = request.client.host if request.client else ""
    try:
        pair = await request.app.state.backends.auth.Login(
            auth_pb2.LoginRequest(username=creds.username, password=creds.password, client_address=client),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    return _token_response(pair)


@router.post("/api/v1/auth/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, request: Request) -> TokenResponse:
    try:
        pair = await request.app.state.backends.auth.Refresh(
            auth_pb2.RefreshRequest(refresh_token=body.refresh_token),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None
    return _token_response(pair)


@router.post("/api/v1/auth/logout", status_code=204)
async def logout(_: CurrentUser, request: Request, body: LogoutRequest | None = None) -> None:
    try:
        await request.app.state.backends.auth.Logout(
            auth_pb2.LogoutRequest(
                access_token=bearer_token(request), refresh_token=body.refresh_token if body else ""
            ),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None


@router.post("/api/v1/auth/password", status_code=204)
async def change_password(_: CurrentUser, body: PasswordChange, request: Request) -> None:
    try:
        await request.app.state.backends.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                access_token=bearer_token(request),
                old_password=body.old_password,
                new_password=body.new_password,
            ),
            timeout=request.app.state.settings.auth_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, AUTH) from None


@router.get("/api/v1/me", response_model=Me)
async def me(principal: CurrentUser) -> Me:
    return Me(id=principal.user_id, username=principal.username, role=principal.role)
