"""Logging in and out: the seeds' POST /token, plus refresh, logout and password change."""

from __future__ import annotations

from fastapi import APIRouter, Request
from genai.auth.v1 import auth_pb2
from pydantic import ValidationError

from genai_gateway.clients import Auth
from genai_gateway.errors import ApiError
from genai_gateway.schemas import (
    LogoutRequest,
    Me,
    PasswordChange,
    RefreshRequest,
    TokenRequest,
    TokenResponse,
)
from genai_gateway.security import CurrentUser, Token

router = APIRouter(tags=["auth"])


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
async def login(request: Request, auth: Auth) -> TokenResponse:
    creds = await _credentials(request)
    client = request.client.host if request.client else ""
    pair = await auth.login(
        auth_pb2.LoginRequest(username=creds.username, password=creds.password, client_address=client)
    )
    return _token_response(pair)


@router.post("/api/v1/auth/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, auth: Auth) -> TokenResponse:
    return _token_response(await auth.refresh(auth_pb2.RefreshRequest(refresh_token=body.refresh_token)))


@router.post("/api/v1/auth/logout", status_code=204)
async def logout(request: Request, auth: Auth, body: LogoutRequest | None = None) -> None:
    """Ends the session: the bearer access token, the body's refresh token, or both. Either valid one is
    enough, so a client whose access token has expired ends its session with the refresh token."""
    refresh_token = body.refresh_token if body else ""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    access_token = token.strip() if scheme.lower() == "bearer" else ""
    if not access_token and not refresh_token:
        raise ApiError(
            401,
            "send the access token (Authorization: Bearer) or the refresh token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    await auth.logout(auth_pb2.LogoutRequest(access_token=access_token, refresh_token=refresh_token))


@router.post("/api/v1/auth/password", response_model=TokenResponse)
async def change_password(_: CurrentUser, token: Token, body: PasswordChange, auth: Auth) -> TokenResponse:
    """Changes the caller's password and ends their other sessions (every token issued before); the answer
    is a new session for the caller."""
    changed = await auth.change_password(
        auth_pb2.ChangePasswordRequest(
            access_token=token, old_password=body.old_password, new_password=body.new_password
        )
    )
    return _token_response(changed.tokens)


@router.get("/api/v1/me", response_model=Me)
async def me(principal: CurrentUser) -> Me:
    return Me(id=principal.user_id, username=principal.username, role=principal.role)
