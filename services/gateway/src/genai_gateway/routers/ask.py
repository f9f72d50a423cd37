"""The seeds' POST /ask, whole or streamed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from genai_common.request_id import current_request_id
from genai_gateway.responses import AskEncoder, ask_body, serve
from genai_gateway.schemas import AskRequest, AskResponse
from genai_gateway.security import CurrentUser
from genai_gateway.serving import Generation

router = APIRouter(tags=["ask"])


@router.post(
    "/ask",
    response_model=AskResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "with stream=true: events"}},
)
async def ask(body: AskRequest, request: Request, response: Response, principal: CurrentUser) -> Any:
    service = request.app.state.ask_service
    # Bad input is refused before it counts against the caller's rate limit.
    service.check_prompt(body.prompt)
    generation = Generation(
        messages=[{"role": "user", "content": body.prompt}],
        model=body.model,
        max_tokens=service.check_max_tokens(body.max_tokens),
        conversation_id=body.conversation_id or "",
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
