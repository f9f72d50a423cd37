"""Who is calling: the bearer token is checked by the auth service on every request."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import Depends, Request
from genai.auth.v1 import auth_pb2

from genai_common.grpc_client import call_metadata
from genai_gateway.errors import ApiError, from_grpc


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


async def current_principal(request: Request) -> auth_pb2.Principal:
    token = bearer_token(request)
    state = request.app.state
    try:
        return await state.backends.auth.Authenticate(
            auth_pb2.AuthenticateRequest(token=token),
            timeout=state.settings.auth_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, "the authentication service") from None


async def admin_principal(
    principal: Annotated[auth_pb2.Principal, Depends(current_principal)],
) -> auth_pb2.Principal:
    if principal.role != "admin":
        raise ApiError(403, "this needs the admin role")
    return principal


CurrentUser = Annotated[auth_pb2.Principal, Depends(current_principal)]
AdminUser = Annotated[auth_pb2.Principal, Depends(admin_principal)]
