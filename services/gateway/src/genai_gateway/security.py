"""Who is calling: the bearer token is checked by the auth service, or by its recent answer while that
cannot have changed (genai_gateway.credentials)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from genai.auth.v1 import auth_pb2

from genai_gateway.errors import ApiError


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


async def current_principal(request: Request) -> auth_pb2.Principal:
    principal: auth_pb2.Principal = await request.app.state.backends.auth.authenticate(bearer_token(request))
    return principal


async def admin_principal(
    principal: Annotated[auth_pb2.Principal, Depends(current_principal)],
) -> auth_pb2.Principal:
    if principal.role != "admin":
        raise ApiError(403, "this needs the admin role")
    return principal


CurrentUser = Annotated[auth_pb2.Principal, Depends(current_principal)]
AdminUser = Annotated[auth_pb2.Principal, Depends(admin_principal)]
# The caller's own credential, for calls that auth authorises by it (API keys, user administration).
Token = Annotated[str, Depends(bearer_token)]
