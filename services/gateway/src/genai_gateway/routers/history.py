"""The caller's own dialogs. Every call names the caller as owner; history enforces it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from genai.history.v1 import history_pb2

from genai_gateway.clients import History
from genai_gateway.schemas import (
    ConversationList,
    ConversationOut,
    ConversationSummary,
    MessageOut,
    Origin,
    Usage,
)
from genai_gateway.security import CurrentUser

router = APIRouter(prefix="/api/v1/history", tags=["history"])


def summary_out(summary: history_pb2.ConversationSummary) -> ConversationSummary:
    return ConversationSummary(
        id=summary.id,
        title=summary.title,
        created_at_ms=summary.created_at_ms,
        updated_at_ms=summary.updated_at_ms,
        message_count=summary.message_count,
        origin=summary.origin,  # type: ignore[arg-type]
    )


def message_out(message: history_pb2.Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        prompt=message.prompt,
        response=message.response,
        source=message.source,
        model=message.model,
        usage=Usage(
            prompt_tokens=message.usage.prompt_tokens,
            completion_tokens=message.usage.completion_tokens,
            total_tokens=message.usage.total_tokens,
        ),
        latency_ms=message.latency_ms,
        request_id=message.request_id,
        created_at_ms=message.created_at_ms,
    )


@router.get("", response_model=ConversationList)
async def list_conversations(
    principal: CurrentUser,
    history: History,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str, Query(max_length=512)] = "",
    origin: Annotated[
        Origin | None, Query(description="only the chat's conversations, or only API calls")
    ] = None,
) -> ConversationList:
    page = await history.list_conversations(
        history_pb2.ListConversationsRequest(
            owner_id=principal.user_id, page_size=limit, page_token=cursor, origin=origin or ""
        )
    )
    return ConversationList(
        conversations=[summary_out(c) for c in page.conversations], next_cursor=page.next_page_token or None
    )


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(conversation_id: str, principal: CurrentUser, history: History) -> ConversationOut:
    conversation = await history.get_conversation(
        history_pb2.GetConversationRequest(owner_id=principal.user_id, conversation_id=conversation_id)
    )
    return ConversationOut(
        **summary_out(conversation.summary).model_dump(),
        messages=[message_out(m) for m in conversation.messages],
    )


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, principal: CurrentUser, history: History) -> None:
    await history.delete_conversation(
        history_pb2.DeleteConversationRequest(owner_id=principal.user_id, conversation_id=conversation_id)
    )
