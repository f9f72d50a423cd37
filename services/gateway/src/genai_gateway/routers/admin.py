"""Admin console reads (role admin, checked here): any user's dialogs, the audit log, usage.

Every read or export of dialogs is written to the audit log by the history service, naming the admin
authenticated here and the request id; the audit log itself can be read, never changed.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from genai.auth.v1 import auth_pb2
from genai.history.v1 import history_pb2
from redis.exceptions import RedisError

from genai_gateway.clients import History
from genai_gateway.errors import ApiError
from genai_gateway.exports import Format, export_file, iso_utc
from genai_gateway.routers.history import message_out, summary_out
from genai_gateway.schemas import (
    AdminConversationList,
    AdminConversationOut,
    AdminConversationSummary,
    AuditEventList,
    AuditEventOut,
    Origin,
    SimilarLayerOut,
    SimilarLayerPatch,
    UsageReportOut,
    UsageRowOut,
)
from genai_gateway.security import AdminUser
from genai_gateway.settings import GatewaySettings
from genai_gateway.similar import SimilarLayer

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

FormatQuery = Annotated[Format, Query(description="json, csv (UTF-8 with BOM) or pdf")]
OwnerQuery = Annotated[str, Query(max_length=64, description="a user id; empty: every user")]


def _actor(principal: auth_pb2.Principal) -> history_pb2.Actor:
    return history_pb2.Actor(
        user_id=principal.user_id, username=principal.username, api_key_id=principal.api_key_id
    )


def _owner(value: str) -> str:
    """A user id, checked here so that a typo gets a message naming the parameter."""
    if value:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ApiError(422, "invalid request: owner: must be a user id (UUID)") from None
    return ""


def _admin_summary(summary: history_pb2.ConversationSummary) -> AdminConversationSummary:
    return AdminConversationSummary(**summary_out(summary).model_dump(), owner_id=summary.owner_id)


@router.get("/conversations", response_model=AdminConversationList)
async def list_conversations(
    principal: AdminUser,
    history: History,
    owner: OwnerQuery = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str, Query(max_length=512)] = "",
    origin: Annotated[Origin | None, Query(description="only chat conversations, or only API calls")] = None,
) -> AdminConversationList:
    """Conversations of one user (or of everyone), newest updated first. Audited."""
    page = await history.admin_list_conversations(
        history_pb2.AdminListConversationsRequest(
            actor=_actor(principal),
            owner_id=_owner(owner),
            page_size=limit,
            page_token=cursor,
            origin=origin or "",
        )
    )
    return AdminConversationList(
        conversations=[_admin_summary(c) for c in page.conversations],
        next_cursor=page.next_page_token or None,
    )


@router.get("/conversations/export", response_class=Response)
async def export_user(
    principal: AdminUser,
    history: History,
    request: Request,
    owner: Annotated[str, Query(min_length=1, max_length=64, description="the user id")],
    format: FormatQuery = "json",  # noqa: A002
) -> Response:
    """Every conversation of one user as a file. Audited (export_user)."""
    owner_id = _owner(owner)
    messages = history.admin_export_conversations(
        history_pb2.AdminExportConversationsRequest(actor=_actor(principal), owner_id=owner_id)
    )
    today = datetime.now(UTC).strftime("%Y%m%d")
    return await export_file(
        request, principal.user_id, messages, format, f"conversations-{owner_id}-{today}", "Conversations"
    )


@router.get("/conversations/{conversation_id}", response_model=AdminConversationOut)
async def get_conversation(
    conversation_id: str, principal: AdminUser, history: History
) -> AdminConversationOut:
    """Any user's conversation. Audited (read_conversation)."""
    conversation = await history.admin_get_conversation(
        history_pb2.AdminGetConversationRequest(actor=_actor(principal), conversation_id=conversation_id)
    )
    return AdminConversationOut(
        **_admin_summary(conversation.summary).model_dump(),
        messages=[message_out(m) for m in conversation.messages],
    )


@router.get("/conversations/{conversation_id}/export", response_class=Response)
async def export_conversation(
    conversation_id: str,
    principal: AdminUser,
    history: History,
    request: Request,
    format: FormatQuery = "json",  # noqa: A002
) -> Response:
    """Any user's conversation as a file. Audited (export_conversation)."""
    messages = history.admin_export_conversations(
        history_pb2.AdminExportConversationsRequest(actor=_actor(principal), conversation_id=conversation_id)
    )
    return await export_file(
        request, principal.user_id, messages, format, f"conversation-{conversation_id}", "Conversation"
    )


@router.get("/audit", response_model=AuditEventList)
async def audit_log(
    _: AdminUser,
    history: History,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> AuditEventList:
    """Who read or exported whose dialogs, newest first."""
    page = await history.list_audit_events(
        history_pb2.ListAuditEventsRequest(page_size=limit, page_token=cursor)
    )
    return AuditEventList(
        events=[
            AuditEventOut(
                id=event.id,
                at=iso_utc(event.at_ms),
                at_ms=event.at_ms,
                actor_id=event.actor_id,
                actor_username=event.actor_username,
                action=event.action,
                target_owner_id=event.target_owner_id or None,
                target_conversation_id=event.target_conversation_id or None,
                request_id=event.request_id,
                details=json.loads(event.details_json or "{}"),
            )
            for event in page.events
        ],
        next_cursor=page.next_page_token or None,
    )


@router.get("/usage", response_model=UsageReportOut)
async def usage(
    _: AdminUser,
    history: History,
    from_day: Annotated[date, Query(alias="from", description="first day, YYYY-MM-DD (UTC)")],
    to_day: Annotated[date, Query(alias="to", description="last day, included; at most 366 days in all")],
    owner: OwnerQuery = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
    cursor: Annotated[str, Query(max_length=512)] = "",
) -> UsageReportOut:
    """Requests, tokens and cache hits per user and day, from the stored dialogs."""
    page = await history.usage_report(
        history_pb2.UsageReportRequest(
            from_day=from_day.isoformat(),
            to_day=to_day.isoformat(),
            owner_id=_owner(owner),
            page_size=limit,
            page_token=cursor,
        )
    )
    return UsageReportOut(
        rows=[
            UsageRowOut(
                day=row.day,
                owner_id=row.owner_id,
                requests=row.requests,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
                cache_hits=row.cache_hits,
            )
            for row in page.rows
        ],
        next_cursor=page.next_page_token or None,
    )


@router.delete("/cache")
async def purge_cache(_: AdminUser, request: Request) -> dict[str, int]:
    """Forget every cached answer (e.g. after changing the model), and the similar-request layer's
    index: the next asks go to the model."""
    try:
        deleted = await request.app.state.cache.purge()
        if request.app.state.similar is not None:
            deleted += await request.app.state.similar.purge()
    except (RedisError, OSError) as exc:
        # Both live in the cache's Redis.
        request.app.state.cache.guard.failed(exc)
        raise ApiError(503, "the cache cannot be purged right now (Redis is unavailable)") from None
    return {"deleted": deleted}


async def _similar_out(similar: SimilarLayer | None, settings: GatewaySettings) -> SimilarLayerOut:
    if similar is None:
        return SimilarLayerOut(
            enabled=False,
            threshold=settings.similar_threshold,
            default_threshold=settings.similar_threshold,
            model_ready=False,
        )
    config = await similar.config()
    return SimilarLayerOut(
        enabled=config.enabled,
        threshold=config.threshold,
        default_threshold=similar.threshold,
        model_ready=similar.embedder.ready,
    )


@router.get("/cache/similar", response_model=SimilarLayerOut)
async def similar_layer(_: AdminUser, request: Request) -> SimilarLayerOut:
    """The similar-request layer's state, shared by every gateway (off for good when the gateway's settings
    switch it off)."""
    try:
        return await _similar_out(request.app.state.similar, request.app.state.settings)
    except (RedisError, OSError) as exc:
        request.app.state.redis_guard.failed(exc)
        raise ApiError(
            503, "the similar-request layer's settings cannot be read (Redis is unavailable)"
        ) from None


@router.patch("/cache/similar", response_model=SimilarLayerOut)
async def configure_similar_layer(body: SimilarLayerPatch, _: AdminUser, request: Request) -> SimilarLayerOut:
    """Turn the similar-request layer off or on, or change its threshold, for every gateway at once
    (each reads the change within seconds)."""
    similar: SimilarLayer | None = request.app.state.similar
    if similar is None:
        raise ApiError(
            400,
            "the similar-request layer is switched off in the gateway's settings (GENAI_GATEWAY_SIMILAR_ENABLED)",
            code="similar_layer_off",
        )
    try:
        await similar.configure(enabled=body.enabled, threshold=body.threshold)
        return await _similar_out(similar, request.app.state.settings)
    except (RedisError, OSError) as exc:
        request.app.state.redis_guard.failed(exc)
        raise ApiError(503, "the similar-request layer cannot be changed (Redis is unavailable)") from None


@router.delete("/cache/similar")
async def purge_similar_layer(_: AdminUser, request: Request) -> dict[str, int]:
    """Forget the similar-request layer's index (the exact cache stays): questions are matched again only
    with answers given from now on."""
    similar: SimilarLayer | None = request.app.state.similar
    if similar is None:
        return {"deleted": 0}
    try:
        return {"deleted": await similar.purge()}
    except (RedisError, OSError) as exc:
        similar.guard.failed(exc)
        raise ApiError(503, "the similar-request layer cannot be purged (Redis is unavailable)") from None
