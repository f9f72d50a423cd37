"""Who is calling: the bearer token is checked by the auth service, or by its recent answer while that
cannot have changed (genai_gateway.credentials)."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import Depends, Request
from genai.auth.v1 import auth_pb2

from genai_gateway.backends import Backends
from genai_gateway.errors import ApiError, from_grpc
from genai_gateway.settings import GatewaySettings


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


async def authenticate(backends: Backends, settings: GatewaySettings, token: str) -> auth_pb2.Principal:
    """Who a token or API key belongs to, asked of the auth service; ApiError (401, 503...) otherwise.

    The one check behind the HTTP API and the public gRPC API.
    """
    try:
        return await backends.credentials.authenticate(backends.auth, token, settings.auth_timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "the authentication service") from None


async def current_principal(request: Request) -> auth_pb2.Principal:
    return await authenticate(request.app.state.backends, request.app.state.settings, bearer_token(request))


async def admin_principal(
    principal: Annotated[auth_pb2.Principal, Depends(current_principal)],
) -> auth_pb2.Principal:
    if principal.role != "admin":
        raise ApiError(403, "this needs the admin role")
    return principal


CurrentUser = Annotated[auth_pb2.Principal, Depends(current_principal)]
AdminUser = Annotated[auth_pb2.Principal, Depends(admin_principal)]
