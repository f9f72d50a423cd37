"""The seeds' POST /ask, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from genai_common.request_id import current_request_id
from genai_gateway.pipeline import Generation
from genai_gateway.responses import AskEncoder, ask_body, serve
from genai_gateway.schemas import AskRequest, AskResponse
from genai_gateway.security import CurrentUser

router = APIRouter(tags=["ask"])


@router.post(
    "/ask",
    response_model=AskResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true: events"}},
)
async def ask(body: AskRequest, request: Request, response: Response, principal: CurrentUser) -> Any:
    generation = Generation(
        messages=[{"role": "user", "content": body.prompt}],
        model=body.model,
        max_tokens=body.max_tokens,
        conversation_id=body.conversation_id or "",
        origin=body.origin,
        input_name="prompt",
    )
    request_id = current_request_id.get()
    return await serve(
        generation,
        stream=body.stream,
        encoder=lambda _model: AskEncoder(request_id),
        whole=lambda answer: ask_body(answer, request_id),
        request=request,
        response=response,
        principal=principal,
    )
