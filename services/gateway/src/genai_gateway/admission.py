"""Letting a request through to the model: the per-user rate limit, with its headers."""

from __future__ import annotations

from fastapi import Request, Response
from genai.auth.v1 import auth_pb2

from genai_gateway.errors import ApiError


async def admit(request: Request, response: Response, principal: auth_pb2.Principal) -> None:
    """Count the request against the caller's limit; raise 429 with Retry-After when over it."""
    decision = await request.app.state.limiter.hit(f"user:{principal.user_id}")
    headers = decision.headers()
    if not decision.allowed:
        raise ApiError(
            429,
            f"rate limit of {decision.limit} requests per minute reached; retry in {headers['Retry-After']} s",
            code="rate_limited",
            headers=headers,
        )
    response.headers.update(headers)
