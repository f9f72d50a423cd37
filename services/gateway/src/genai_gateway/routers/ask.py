"""The seeds' POST /ask."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from genai_common.request_id import current_request_id

from genai_gateway.admission import admit
from genai_gateway.schemas import AskRequest, AskResponse, Usage
from genai_gateway.security import CurrentUser

router = APIRouter(tags=["ask"])


@router.post("/ask", response_model=AskResponse)
async def ask(body: AskRequest, request: Request, response: Response, principal: CurrentUser) -> AskResponse:
    service = request.app.state.ask_service
    # Bad input is refused before it counts against the caller's rate limit.
    max_tokens = service.check_input(body.prompt, body.max_tokens)
    await admit(request, response, principal)
    answer = await service.ask(principal, body.prompt, max_tokens)
    return AskResponse(
        response=answer.text,
        source=answer.source,
        model=answer.model,
        usage=Usage(
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            total_tokens=answer.prompt_tokens + answer.completion_tokens,
        ),
        conversation_id=answer.conversation_id or None,
        request_id=current_request_id.get(),
    )
