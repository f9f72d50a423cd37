"""Letting a request through to the model: the caller's limits, and giving the slot back afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request, Response
from genai.auth.v1 import auth_pb2

from genai_gateway.quota import Admission, Quotas
from genai_gateway.serving import Answer, Delta, Queued


def subject(principal: auth_pb2.Principal) -> str:
    return f"user:{principal.user_id}"


async def admit_principal(quotas: Quotas, principal: auth_pb2.Principal) -> Admission:
    limits = quotas.limits_for(principal.role, principal.limits_json)
    return await quotas.admit(subject(principal), limits)


async def admit(request: Request, response: Response, principal: auth_pb2.Principal) -> Admission:
    """Count the request against the caller's limits (429 with Retry-After when over one)."""
    admission = await admit_principal(request.app.state.quotas, principal)
    response.headers.update(admission.headers())
    return admission


async def settle(quotas: Quotas, admission: Admission, answer: Answer | None) -> None:
    """After an answer (or a failure): charge the tokens the model spent, give the slot back."""
    # Only a generation of its own costs tokens: not a cached answer, nor one shared with another request.
    spent = answer is not None and answer.source == "model" and not answer.coalesced
    tokens = answer.total_tokens if answer is not None and spent else 0
    # Shielded: a client that leaves while this runs must not keep its slot.
    await asyncio.shield(quotas.settle(admission, tokens))


async def metered(
    events: AsyncIterator[Delta | Queued | Answer], quotas: Quotas, admission: Admission
) -> AsyncIterator[Delta | Queued | Answer]:
    """A stream that settles its admission when it ends, however it ends (done, failed, client gone)."""
    answer: Answer | None = None
    try:
        async for item in events:
            if isinstance(item, Answer):
                answer = item
            yield item
    finally:
        await settle(quotas, admission, answer)
