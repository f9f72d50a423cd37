"""The caller's own dialogs beyond list, read and delete: rename, full-text search, export as a file.

Registered before the history router: /search and /export would otherwise be taken for conversation ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from genai.history.v1 import history_pb2

from genai_gateway.clients import History
from genai_gateway.exports import Format, export_file
from genai_gateway.routers.history import summary_out
from genai_gateway.schemas import ConversationRename, ConversationSummary, SearchHit, SearchResults
from genai_gateway.security import CurrentUser

router = APIRouter(prefix="/api/v1/history", tags=["history"])

FormatQuery = Annotated[Format, Query(description="json, csv (UTF-8 with BOM) or pdf")]


@router.get("/search", response_model=SearchResults)
async def search(
    principal: CurrentUser,
    history: History,
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=500, description='words, "a phrase", -word, or')],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> SearchResults:
    """Your prompts and responses that match, most relevant first; snippets are plain text."""
    quotas = request.app.state.pipeline.quotas
    settings = request.app.state.settings
    await quotas.settle(
        await quotas.admit_read("searches", principal.user_id, settings.searches_per_minute), 0
    )
    page = await history.search_messages(
        history_pb2.SearchMessagesRequest(
            owner_id=principal.user_id, query=q, page_size=limit, page_token=cursor
        )
    )
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
async def export_all(
    principal: CurrentUser,
    history: History,
    request: Request,
    format: FormatQuery = "json",  # noqa: A002
) -> Response:
    """Every one of your conversations as one file."""
    messages = history.export_conversations(
        history_pb2.ExportConversationsRequest(owner_id=principal.user_id)
    )
    today = datetime.now(UTC).strftime("%Y%m%d")
    return await export_file(
        request, principal.user_id, messages, format, f"conversations-{today}", "Conversations"
    )


@router.get("/{conversation_id}/export", response_class=Response)
async def export_one(
    conversation_id: str,
    principal: CurrentUser,
    history: History,
    request: Request,
    format: FormatQuery = "json",  # noqa: A002
) -> Response:
    """One of your conversations as a file."""
    messages = history.export_conversations(
        history_pb2.ExportConversationsRequest(owner_id=principal.user_id, conversation_id=conversation_id)
    )
    return await export_file(
        request, principal.user_id, messages, format, f"conversation-{conversation_id}", "Conversation"
    )


@router.patch("/{conversation_id}", response_model=ConversationSummary)
async def rename(
    conversation_id: str, body: ConversationRename, principal: CurrentUser, history: History
) -> ConversationSummary:
    summary = await history.rename_conversation(
        history_pb2.RenameConversationRequest(
            owner_id=principal.user_id, conversation_id=conversation_id, title=body.title
        )
    )
    return summary_out(summary)
