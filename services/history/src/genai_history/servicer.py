"""gRPC face of the history service: validates requests, calls the store, builds replies."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import NoReturn

import asyncpg
import grpc
from genai.history.v1 import history_pb2, history_pb2_grpc

from genai_history.paging import EPOCH, InvalidPageToken, decode_page_token, encode_page_token, to_micros
from genai_history.settings import HistorySettings
from genai_history.store import ConversationNotFound, ConversationRow, Exchange, HistoryStore, MessageRow
from genai_history.titles import title_from_prompt

logger = logging.getLogger(__name__)

SERVICE_NAME = "genai.history.v1.HistoryService"
SOURCES = ("model", "cache")
# Model names, request ids and exchange ids are identifiers, not text: a short cap keeps junk out.
MAX_ID_CHARS = 256
# Same answer whether the conversation is missing or someone else's.
NOT_FOUND_MESSAGE = "conversation not found"
# Errors that mean the database cannot be reached right now; callers may retry (or spool) on UNAVAILABLE.
_DATABASE_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    """Implements genai.history.v1.HistoryService; every call is scoped to the request's owner_id."""

    def __init__(self, store: HistoryStore, settings: HistorySettings) -> None:
        self._store = store
        self._settings = settings

    async def AppendExchange(
        self, request: history_pb2.AppendExchangeRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendExchangeResponse:
        owner_id = await _owner(request.owner_id, context)
        conversation_id = None
        if request.conversation_id:
            conversation_id = _uuid_or_none(request.conversation_id)
            if conversation_id is None:
                await _not_found(context)
        exchange = await self._exchange(request, context)
        async with _database(context):
            try:
                stored_conversation, message_id = await self._store.append_exchange(
                    owner_id, conversation_id, title_from_prompt(exchange.prompt), exchange
                )
            except ConversationNotFound:
                await _not_found(context)
        return history_pb2.AppendExchangeResponse(
            conversation_id=str(stored_conversation), message_id=str(message_id)
        )

    async def ListConversations(
        self, request: history_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ListConversationsResponse:
        owner_id = await _owner(request.owner_id, context)
        if request.page_size < 0:
            await _invalid(context, "page_size must not be negative")
        page_size = min(request.page_size or self._settings.default_page_size, self._settings.max_page_size)
        after = None
        if request.page_token:
            try:
                after = decode_page_token(request.page_token)
            except InvalidPageToken:
                await _invalid(context, "page_token is not valid; pass next_page_token from a previous reply")
        async with _database(context):
            rows, next_cursor = await self._store.list_conversations(owner_id, page_size, after)
        return history_pb2.ListConversationsResponse(
            conversations=[_summary(row) for row in rows],
            next_page_token=encode_page_token(next_cursor) if next_cursor else "",
        )

    async def GetConversation(
        self, request: history_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.Conversation:
        owner_id = await _owner(request.owner_id, context)
        conversation_id = _uuid_or_none(request.conversation_id)
        if conversation_id is None:
            await _not_found(context)
        if request.max_messages < 0:
            await _invalid(context, "max_messages must not be negative")
        limit = min(request.max_messages or self._settings.max_messages, self._settings.max_messages)
        async with _database(context):
            try:
                summary, messages = await self._store.get_conversation(owner_id, conversation_id, limit)
            except ConversationNotFound:
                await _not_found(context)
        return history_pb2.Conversation(summary=_summary(summary), messages=[_message(m) for m in messages])

    async def DeleteConversation(
        self, request: history_pb2.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.DeleteConversationResponse:
        owner_id = await _owner(request.owner_id, context)
        conversation_id = _uuid_or_none(request.conversation_id)
        if conversation_id is None:
            await _not_found(context)
        async with _database(context):
            try:
                await self._store.delete_conversation(owner_id, conversation_id)
            except ConversationNotFound:
                await _not_found(context)
        logger.info("deleted conversation %s", conversation_id)
        return history_pb2.DeleteConversationResponse()

    async def _exchange(
        self, request: history_pb2.AppendExchangeRequest, context: grpc.aio.ServicerContext
    ) -> Exchange:
        limit = self._settings.max_text_chars
        for name, text in (("prompt", request.prompt), ("response", request.response)):
            if len(text) > limit:
                await _invalid(context, f"{name} is {len(text)} characters; the limit is {limit}")
        if request.source not in SOURCES:
            await _invalid(context, "source must be 'model' or 'cache'")
        for name, value in (
            ("model", request.model),
            ("request_id", request.request_id),
            ("exchange_id", request.exchange_id),
        ):
            if len(value) > MAX_ID_CHARS:
                await _invalid(context, f"{name} is longer than {MAX_ID_CHARS} characters")
        usage = request.usage
        for name, number in (
            ("usage.prompt_tokens", usage.prompt_tokens),
            ("usage.completion_tokens", usage.completion_tokens),
            ("usage.total_tokens", usage.total_tokens),
            ("latency_ms", request.latency_ms),
        ):
            if number < 0:
                await _invalid(context, f"{name} must not be negative")
        created_at = None
        if request.created_at_ms:
            created_at = _from_millis(request.created_at_ms)
            if created_at is None:
                await _invalid(context, "created_at_ms must be 0 (now) or a positive time in milliseconds")
        return Exchange(
            prompt=_storable(request.prompt),
            response=_storable(request.response),
            source=request.source,
            model=_storable(request.model) or None,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            latency_ms=request.latency_ms,
            request_id=_storable(request.request_id) or None,
            created_at=created_at,
            exchange_id=_storable(request.exchange_id) or None,
        )


@asynccontextmanager
async def _database(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except _DATABASE_DOWN as exc:
        logger.warning("database unavailable: %s", type(exc).__name__)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "history database is unavailable; try again later")


async def _owner(value: str, context: grpc.aio.ServicerContext) -> uuid.UUID:
    owner_id = _uuid_or_none(value)
    if owner_id is None:
        await _invalid(context, "owner_id must be a UUID")
    return owner_id


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def _invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("abort returned")  # pragma: no cover


async def _not_found(context: grpc.aio.ServicerContext) -> NoReturn:
    await context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
    raise AssertionError("abort returned")  # pragma: no cover


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; keeping the exchange with a visible stand-in beats losing it.
    return text.replace("\x00", "\ufffd")


def _from_millis(millis: int) -> datetime | None:
    if millis <= 0:
        return None
    try:
        return EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return None


def _millis(moment: datetime) -> int:
    return to_micros(moment) // 1000


def _summary(row: ConversationRow) -> history_pb2.ConversationSummary:
    return history_pb2.ConversationSummary(
        id=str(row.id),
        title=row.title,
        created_at_ms=_millis(row.created_at),
        updated_at_ms=_millis(row.updated_at),
        message_count=row.message_count,
    )


def _message(row: MessageRow) -> history_pb2.Message:
    return history_pb2.Message(
        id=str(row.id),
        prompt=row.prompt,
        response=row.response,
        source=row.source,
        model=row.model,
        usage=history_pb2.Usage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens,
        ),
        latency_ms=row.latency_ms,
        request_id=row.request_id,
        created_at_ms=_millis(row.created_at),
    )
