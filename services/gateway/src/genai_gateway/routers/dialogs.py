"""The caller's own dialogs beyond list, read and delete: rename, full-text search, export as a file.

Registered before the history router: /search and /export would otherwise be taken for conversation ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import grpc
from fastapi import APIRouter, Query, Request, Response
from genai.history.v1 import history_pb2

from genai_common.grpc_client import call_metadata
from genai_gateway.errors import from_grpc
from genai_gateway.exports import Format, download
from genai_gateway.routers.history import HISTORY, summary_out
from genai_gateway.schemas import ConversationRename, ConversationSummary, SearchHit, SearchResults
from genai_gateway.security import CurrentUser

router = APIRouter(prefix="/api/v1/history", tags=["history"])

FormatQuery = Annotated[Format, Query(description="json, csv (UTF-8 with BOM) or pdf")]


@router.get("/search", response_model=SearchResults)
async def search(
    principal: CurrentUser,
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=500, description='words, "a phrase", -word, or')],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> SearchResults:
    """Your prompts and responses that match, newest first; snippets are plain text."""
    try:
        page = await request.app.state.backends.history.SearchMessages(
            history_pb2.SearchMessagesRequest(
                owner_id=principal.user_id, query=q, page_size=limit, page_token=cursor
            ),
            timeout=request.app.state.settings.history_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, HISTORY) from None
    return SearchResults(
        hits=[
            SearchHit(
                conversation_id=hit.conversation_id,
                conversation_title=hit.conversation_title,
                message_id=hit.message_id,
                snippet=hit.snippet,
                created_at_ms=hit.created_at_ms,
            )
            for hit in page.hits
        ],
        next_cursor=page.next_page_token or None,
    )


@router.get("/export", response_class=Response)
async def export_all(principal: CurrentUser, request: Request, format: FormatQuery = "json") -> Response:  # noqa: A002
    """Every one of your conversations as one file."""
    settings = request.app.state.settings
    call = request.app.state.backends.history.ExportConversations(
        history_pb2.ExportConversationsRequest(owner_id=principal.user_id),
        timeout=settings.export_timeout_s,
        metadata=call_metadata(),
    )
    today = datetime.now(UTC).strftime("%Y%m%d")
    return await download(call, format, f"conversations-{today}", "Conversations", settings)


@router.get("/{conversation_id}/export", response_class=Response)
async def export_one(
    conversation_id: str,
    principal: CurrentUser,
    request: Request,
    format: FormatQuery = "json",  # noqa: A002
) -> Response:
    """One of your conversations as a file."""
    settings = request.app.state.settings
    call = request.app.state.backends.history.ExportConversations(
        history_pb2.ExportConversationsRequest(owner_id=principal.user_id, conversation_id=conversation_id),
        timeout=settings.export_timeout_s,
        metadata=call_metadata(),
    )
    return await download(call, format, f"conversation-{conversation_id}", "Conversation", settings)


@router.patch("/{conversation_id}", response_model=ConversationSummary)
async def rename(
    conversation_id: str, body: ConversationRename, principal: CurrentUser, request: Request
) -> ConversationSummary:
    try:
        summary = await request.app.state.backends.history.RenameConversation(
            history_pb2.RenameConversationRequest(
                owner_id=principal.user_id, conversation_id=conversation_id, title=body.title
            ),
            timeout=request.app.state.settings.history_timeout_s,
            metadata=call_metadata(),
        )
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc, HISTORY) from None
    return summary_out(summary)
