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


# What an API key of the "chat" scope (a Telegram link's, which the bot holds) may call: asking, reading
# its user's history, and ending its own link. Anything else is refused here, whatever the route would do.
CHAT_SCOPE = "chat"
CHAT_SCOPE_ROUTES = frozenset(
    {
        "POST /ask",
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "GET /v1/models",
        "GET /api/v1/me",
        "GET /api/v1/history",
        "GET /api/v1/history/{conversation_id}",
        "DELETE /api/v1/telegram/links/{link_id}",
    }
)
CHAT_ONLY = "this API key may only chat and read its user's history"


def route_key(request: Request) -> str:
    """ "METHOD /path/{param}", as the OpenAPI document names the operation."""
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path_format', request.url.path)}"


async def current_principal(request: Request) -> auth_pb2.Principal:
    principal: auth_pb2.Principal = await request.app.state.backends.auth.authenticate(bearer_token(request))
    if principal.scope == CHAT_SCOPE and route_key(request) not in CHAT_SCOPE_ROUTES:
        raise ApiError(403, CHAT_ONLY)
    return principal


async def admin_principal(
    principal: Annotated[auth_pb2.Principal, Depends(current_principal)],
) -> auth_pb2.Principal:
    if principal.role != "admin":
        raise ApiError(403, "this needs the admin role")
    return principal


async def admin_or_anonymous(request: Request) -> auth_pb2.Principal | None:
    """The caller if the request carries an admin's credential, else None; never an error. For a route that
    answers anyone and admins with more (GET /health): a missing, invalid, expired or non-admin credential,
    or auth not answering, makes an anonymous caller, so that the route keeps working through an auth
    outage. Without an Authorization header auth is not asked at all."""
    if not request.headers.get("authorization"):
        return None
    try:
        return await admin_principal(await current_principal(request))
    except ApiError:
        return None


CurrentUser = Annotated[auth_pb2.Principal, Depends(current_principal)]
AdminUser = Annotated[auth_pb2.Principal, Depends(admin_principal)]
# The caller's own credential, for calls that auth authorises by it (API keys, user administration).
Token = Annotated[str, Depends(bearer_token)]
