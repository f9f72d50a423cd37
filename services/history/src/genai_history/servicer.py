"""gRPC face of the history service: validates requests, calls the store, builds replies."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from datetime import date, datetime, timedelta
from typing import NoReturn

import grpc
from genai.history.v1 import history_pb2, history_pb2_grpc

from genai_common.grpc_server import CALLER_MESSAGE, NO_RETRY, RETRY_AFTER_S
from genai_common.request_id import current_request_id
from genai_history import audit, usage
from genai_history.audit import MAX_LABEL_CHARS, AuditEntry
from genai_history.paging import (
    EPOCH,
    Cursor,
    InvalidPageToken,
    SearchCursor,
    UsageCursor,
    decode_audit_token,
    decode_page_token,
    decode_search_token,
    decode_usage_token,
    encode_audit_token,
    encode_page_token,
    encode_search_token,
    encode_usage_token,
    to_micros,
)
from genai_history.settings import HistorySettings
from genai_history.store import (
    ACQUIRE_TIMEOUT_S,
    DATABASE_DOWN,
    Append,
    ConversationNotFound,
    ConversationRow,
    Exchange,
    ExportCaps,
    ExportScope,
    ExportTooLarge,
    HistoryStore,
    MessageRow,
)
from genai_history.titles import MAX_CUSTOM_TITLE_CHARS, clean_title, title_from_prompt

logger = logging.getLogger(__name__)

SERVICE_NAME = "genai.history.v1.HistoryService"
SOURCES = ("model", "cache")
# Where a conversation comes from (migration 0004); an exchange that names none starts an "api" one.
ORIGINS = ("chat", "api")
# Model names, request ids and exchange ids are identifiers, not text: a short cap keeps junk out.
MAX_ID_CHARS = 256
# Same answer whether the conversation is missing or someone else's.
NOT_FOUND_MESSAGE = "conversation not found"
# Longest search query, in characters.
MAX_QUERY_CHARS = 500
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class HistoryServicer(history_pb2_grpc.HistoryServiceServicer):
    """Implements genai.history.v1.HistoryService; every call is scoped to the request's owner_id."""

    def __init__(self, store: HistoryStore, settings: HistorySettings) -> None:
        self._store = store
        self._settings = settings

    async def AppendExchange(
        self, request: history_pb2.AppendExchangeRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendExchangeResponse:
        try:
            item = self._append(request)
        except _Refused as exc:
            await context.abort(exc.code, exc.message)
        async with _database(context):
            try:
                stored_conversation, message_id = await self._store.append_exchange(
                    item.owner_id,
                    # No conversation named: the database gives the new one its id.
                    item.conversation_id if request.conversation_id else None,
                    item.title,
                    item.exchange,
                    item.origin,
                    start=item.start,
                )
            except ConversationNotFound:
                await _not_found(context)
        return history_pb2.AppendExchangeResponse(
            conversation_id=str(stored_conversation), message_id=str(message_id)
        )

    async def AppendExchanges(
        self, request: history_pb2.AppendExchangesRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendExchangesResponse:
        results: list[history_pb2.AppendResult | None] = []
        batch: list[Append] = []
        for exchange in request.exchanges:
            try:
                item = self._append(exchange)
                if not item.start and not exchange.conversation_id:
                    # A batch is written in one go, so each exchange must know its conversation's id.
                    raise _Refused(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "in a batch, conversation_id is required (with start_conversation for a new one)",
                    )
            except _Refused as exc:
                results.append(history_pb2.AppendResult(error_code=exc.code.name, error=exc.message))
                continue
            results.append(None)
            batch.append(item)
        async with _database(context):
            stored = iter(await self._store.append_exchanges(batch)) if batch else iter(())
        replies = []
        for exchange, result in zip(request.exchanges, results, strict=True):
            if result is None:
                ids = next(stored)
                result = (
                    history_pb2.AppendResult(error_code="NOT_FOUND", error=NOT_FOUND_MESSAGE)
                    if ids is None
                    else history_pb2.AppendResult(conversation_id=str(ids[0]), message_id=str(ids[1]))
                )
            # Under the id of the request that asked, not of the batch: a request is traced through
            # every service's log by its id, and this is where its exchange was stored (or refused).
            logger.info(
                "exchange %s",
                "stored" if not result.error_code else f"refused: {result.error_code}",
                extra={"rpc": "AppendExchanges", "request_id": exchange.request_id or None},
            )
            replies.append(result)
        return history_pb2.AppendExchangesResponse(results=replies)

    async def ListConversations(
        self, request: history_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ListConversationsResponse:
        owner_id = await _owner(request.owner_id, context)
        origin = await _origin(request.origin, context)
        page_size = await self._page_size(request.page_size, context)
        after = await _cursor(request.page_token, context)
        async with _database(context):
            rows, next_cursor = await self._store.list_conversations(owner_id, page_size, after, origin)
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
        limit = await self._max_messages(request.max_messages, context)
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

    async def RenameConversation(
        self, request: history_pb2.RenameConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ConversationSummary:
        owner_id = await _owner(request.owner_id, context)
        conversation_id = _uuid_or_none(request.conversation_id)
        if conversation_id is None:
            await _not_found(context)
        title = clean_title(_storable(request.title))
        if not 1 <= len(title) <= MAX_CUSTOM_TITLE_CHARS:
            await _invalid(context, f"title must be 1 to {MAX_CUSTOM_TITLE_CHARS} characters")
        async with _database(context):
            try:
                row = await self._store.rename_conversation(owner_id, conversation_id, title)
            except ConversationNotFound:
                await _not_found(context)
        return _summary(row)

    async def SearchMessages(
        self, request: history_pb2.SearchMessagesRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.SearchMessagesResponse:
        owner_id = await _owner(request.owner_id, context)
        query = " ".join(_storable(request.query).split())
        if not query:
            await _invalid(context, "query must not be empty")
        if len(query) > MAX_QUERY_CHARS:
            await _invalid(context, f"query is longer than {MAX_QUERY_CHARS} characters")
        page_size = await self._page_size(request.page_size, context)
        after = await _search_cursor(request.page_token, context)
        async with _database(context):
            hits, next_cursor = await self._store.search_messages(owner_id, query, page_size, after)
        return history_pb2.SearchMessagesResponse(
            hits=[
                history_pb2.SearchHit(
                    conversation_id=str(hit.conversation_id),
                    conversation_title=hit.conversation_title,
                    message_id=str(hit.message_id),
                    snippet=hit.snippet,
                    created_at_ms=_millis(hit.created_at),
                )
                for hit in hits
            ],
            next_page_token=encode_search_token(next_cursor) if next_cursor else "",
        )

    async def ExportConversations(
        self, request: history_pb2.ExportConversationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[history_pb2.ExportedMessage]:
        owner_id = await _owner(request.owner_id, context)
        conversation_id = None
        if request.conversation_id:
            conversation_id = _uuid_or_none(request.conversation_id)
            if conversation_id is None:
                await _not_found(context)
        scope = ExportScope(owner_id=owner_id, conversation_id=conversation_id)
        async for item in self._export(scope, None, context):
            yield item

    async def AdminListConversations(
        self, request: history_pb2.AdminListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AdminListConversationsResponse:
        entry = await _actor(request.actor, "list_conversations", context)
        owner_id = await _optional_owner(request.owner_id, context)
        origin = await _origin(request.origin, context)
        page_size = await self._page_size(request.page_size, context)
        after = await _cursor(request.page_token, context)
        async with _database(context):
            rows, next_cursor = await self._store.admin_list_conversations(
                owner_id, page_size, after, entry, origin
            )
        return history_pb2.AdminListConversationsResponse(
            conversations=[_summary(row) for row in rows],
            next_page_token=encode_page_token(next_cursor) if next_cursor else "",
        )

    async def AdminGetConversation(
        self, request: history_pb2.AdminGetConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.Conversation:
        entry = await _actor(request.actor, "read_conversation", context)
        conversation_id = _uuid_or_none(request.conversation_id)
        if conversation_id is None:
            await _not_found(context)
        limit = await self._max_messages(request.max_messages, context)
        async with _database(context):
            try:
                summary, messages = await self._store.admin_get_conversation(conversation_id, limit, entry)
            except ConversationNotFound:
                await _not_found(context)
        logger.info("admin %s read conversation %s", entry.actor_username, conversation_id)
        return history_pb2.Conversation(summary=_summary(summary), messages=[_message(m) for m in messages])

    async def AdminExportConversations(
        self, request: history_pb2.AdminExportConversationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[history_pb2.ExportedMessage]:
        if request.conversation_id:
            entry = await _actor(request.actor, "export_conversation", context)
            conversation_id = _uuid_or_none(request.conversation_id)
            if conversation_id is None:
                await _not_found(context)
            owner_id = await _optional_owner(request.owner_id, context)
            scope = ExportScope(owner_id=owner_id, conversation_id=conversation_id)
        else:
            entry = await _actor(request.actor, "export_user", context)
            if not request.owner_id:
                await _invalid(context, "owner_id or conversation_id is required")
            scope = ExportScope(owner_id=await _owner(request.owner_id, context))
        logger.info("admin %s exports %s", entry.actor_username, entry.action)
        async for item in self._export(scope, entry, context):
            yield item

    async def ListAuditEvents(
        self, request: history_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ListAuditEventsResponse:
        page_size = await self._page_size(request.page_size, context)
        before_id = None
        if request.page_token:
            try:
                before_id = decode_audit_token(request.page_token)
            except InvalidPageToken:
                await _invalid_token(context)
        async with _database(context):
            events, next_id = await audit.list_events(
                self._store.pool, page_size, before_id, ACQUIRE_TIMEOUT_S
            )
        return history_pb2.ListAuditEventsResponse(
            events=[
                history_pb2.AuditEvent(
                    id=event.id,
                    at_ms=_millis(event.at),
                    actor_id=str(event.actor_id),
                    actor_username=event.actor_username,
                    action=event.action,
                    target_owner_id=str(event.target_owner_id or ""),
                    target_conversation_id=str(event.target_conversation_id or ""),
                    request_id=event.request_id,
                    details_json=json.dumps(event.details, ensure_ascii=False, sort_keys=True),
                )
                for event in events
            ],
            next_page_token=encode_audit_token(next_id) if next_id is not None else "",
        )

    async def UsageReport(
        self, request: history_pb2.UsageReportRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.UsageReportResponse:
        from_day = await _day("from_day", request.from_day, context)
        to_day = await _day("to_day", request.to_day, context)
        try:
            usage.check_range(from_day, to_day)
        except usage.InvalidRange as exc:
            await _invalid(context, str(exc))
        owner_id = await _optional_owner(request.owner_id, context)
        if request.page_size < 0:
            await _invalid(context, "page_size must not be negative")
        page_size = min(
            request.page_size or self._settings.max_usage_page_size, self._settings.max_usage_page_size
        )
        after: UsageCursor | None = None
        if request.page_token:
            try:
                after = decode_usage_token(request.page_token)
            except InvalidPageToken:
                await _invalid_token(context)
        async with _database(context):
            rows, next_cursor = await usage.usage_report(
                self._store.pool, from_day, to_day, owner_id, page_size, after, ACQUIRE_TIMEOUT_S
            )
        return history_pb2.UsageReportResponse(
            rows=[
                history_pb2.UsageRow(
                    day=row.day.isoformat(),
                    owner_id=str(row.owner_id),
                    requests=row.requests,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cache_hits=row.cache_hits,
                )
                for row in rows
            ],
            next_page_token=encode_usage_token(next_cursor) if next_cursor else "",
        )

    async def _export(
        self, scope: ExportScope, entry: AuditEntry | None, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[history_pb2.ExportedMessage]:
        caps = ExportCaps(self._settings.export_max_messages, self._settings.export_max_bytes)
        sent = 0
        async with _database(context):
            try:
                # Closed as soon as the client goes away: the rows hold a connection and a transaction.
                async with aclosing(self._store.export_messages(scope, caps, entry)) as rows:
                    async for conversation, message in rows:
                        sent += 1
                        yield history_pb2.ExportedMessage(
                            conversation=_summary(conversation), message=_message(message)
                        )
            except ConversationNotFound:
                await _not_found(context)
            except ExportTooLarge as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, _too_large(exc, caps, scope))
        logger.info("exported %d messages", sent)

    async def _page_size(self, requested: int, context: grpc.aio.ServicerContext) -> int:
        if requested < 0:
            await _invalid(context, "page_size must not be negative")
        return min(requested or self._settings.default_page_size, self._settings.max_page_size)

    async def _max_messages(self, requested: int, context: grpc.aio.ServicerContext) -> int:
        if requested < 0:
            await _invalid(context, "max_messages must not be negative")
        return min(requested or self._settings.max_messages, self._settings.max_messages)

    def _append(self, request: history_pb2.AppendExchangeRequest) -> Append:
        """The exchange checked and ready for the store; `_Refused` says what is wrong with it."""
        owner_id = _uuid_or_none(request.owner_id)
        if owner_id is None:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "owner_id must be a UUID")
        conversation_id = uuid.UUID(int=0)
        if request.conversation_id:
            named = _uuid_or_none(request.conversation_id)
            if named is None:
                # Not a UUID: no such conversation (to a caller who named one), or a bad new id.
                if request.start_conversation:
                    raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "conversation_id must be a UUID")
                raise _Refused(grpc.StatusCode.NOT_FOUND, NOT_FOUND_MESSAGE)
            conversation_id = named
        elif request.start_conversation:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "start_conversation needs the conversation_id")
        # Checked even when the conversation exists and the origin goes unused: a wrong value is a bug.
        if request.origin and request.origin not in ORIGINS:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "origin must be 'chat' or 'api'")
        exchange = self._exchange(request)
        return Append(
            owner_id=owner_id,
            conversation_id=conversation_id,
            start=request.start_conversation,
            title=title_from_prompt(exchange.prompt),
            origin=request.origin or "api",
            exchange=exchange,
        )

    def _exchange(self, request: history_pb2.AppendExchangeRequest) -> Exchange:
        limit = self._settings.max_text_chars
        for name, text in (("prompt", request.prompt), ("response", request.response)):
            if len(text) > limit:
                raise _Refused.invalid(f"{name} is {len(text)} characters; the limit is {limit}")
        if request.source not in SOURCES:
            raise _Refused.invalid("source must be 'model' or 'cache'")
        for name, value in (
            ("model", request.model),
            ("request_id", request.request_id),
            ("exchange_id", request.exchange_id),
        ):
            if len(value) > MAX_ID_CHARS:
                raise _Refused.invalid(f"{name} is longer than {MAX_ID_CHARS} characters")
        usage = request.usage
        for name, number in (
            ("usage.prompt_tokens", usage.prompt_tokens),
            ("usage.completion_tokens", usage.completion_tokens),
            ("usage.total_tokens", usage.total_tokens),
            ("latency_ms", request.latency_ms),
        ):
            if number < 0:
                raise _Refused.invalid(f"{name} must not be negative")
        created_at = None
        if request.created_at_ms:
            created_at = _from_millis(request.created_at_ms)
            if created_at is None:
                raise _Refused.invalid("created_at_ms must be 0 (now) or a positive time in milliseconds")
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


class _Refused(Exception):
    """An exchange that cannot be stored, and the status its caller gets (a batch's item gets it alone)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def invalid(cls, message: str) -> _Refused:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, message)


# Told to the caller as it is (the gateway passes it on with Retry-After), whichever query failed.
DATABASE_UNAVAILABLE = (
    "the history service cannot reach its database (PostgreSQL), so conversations cannot be read right "
    "now; try again in a minute (new answers are kept and appear in your history afterwards)"
)


@asynccontextmanager
async def _database(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    try:
        yield
    except DATABASE_DOWN as exc:
        logger.warning("database unavailable: %s", type(exc).__name__)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            DATABASE_UNAVAILABLE,
            # Every replica shares the database: another one would fail the same way.
            trailing_metadata=(("retry-after", str(RETRY_AFTER_S)), CALLER_MESSAGE, NO_RETRY),
        )


async def _owner(value: str, context: grpc.aio.ServicerContext) -> uuid.UUID:
    owner_id = _uuid_or_none(value)
    if owner_id is None:
        await _invalid(context, "owner_id must be a UUID")
    return owner_id


async def _optional_owner(value: str, context: grpc.aio.ServicerContext) -> uuid.UUID | None:
    return await _owner(value, context) if value else None


async def _origin(value: str, context: grpc.aio.ServicerContext) -> str | None:
    """ "chat" or "api"; None for an empty value (no filter, or the default of a new conversation)."""
    if not value:
        return None
    if value not in ORIGINS:
        await _invalid(context, "origin must be 'chat' or 'api'")
    return value


async def _cursor(token: str, context: grpc.aio.ServicerContext) -> Cursor | None:
    if not token:
        return None
    try:
        return decode_page_token(token)
    except InvalidPageToken:
        await _invalid_token(context)


async def _search_cursor(token: str, context: grpc.aio.ServicerContext) -> SearchCursor | None:
    if not token:
        return None
    try:
        return decode_search_token(token)
    except InvalidPageToken:
        await _invalid_token(context)


async def _actor(actor: history_pb2.Actor, action: str, context: grpc.aio.ServicerContext) -> AuditEntry:
    """The admin named by the caller, as the audit event will record them."""
    actor_id = _uuid_or_none(actor.user_id)
    if actor_id is None:
        await _invalid(context, "actor.user_id must be a UUID")
    username = actor.username.strip()
    if not username or len(username) > MAX_LABEL_CHARS or len(actor.api_key_id) > MAX_LABEL_CHARS:
        await _invalid(context, f"actor.username must be 1 to {MAX_LABEL_CHARS} characters")
    return AuditEntry(
        actor_id=actor_id,
        actor_username=_storable(username),
        action=action,
        request_id=current_request_id.get() or None,
        api_key_id=_storable(actor.api_key_id) or None,
    )


async def _day(name: str, value: str, context: grpc.aio.ServicerContext) -> date:
    if _DAY.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    await _invalid(context, f"{name} must be a date as YYYY-MM-DD")


def _too_large(exc: ExportTooLarge, caps: ExportCaps, scope: ExportScope) -> str:
    mb = 1024 * 1024
    message = (
        f"this export holds {exc.messages} messages and {exc.text_bytes / mb:.1f} MB of text; "
        f"the limits are {caps.max_messages} messages and {caps.max_text_bytes / mb:.1f} MB"
    )
    if scope.conversation_id is None:
        message += "; export conversations one at a time"
    return message


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def _invalid(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    raise AssertionError("abort returned")  # pragma: no cover


async def _invalid_token(context: grpc.aio.ServicerContext) -> NoReturn:
    await _invalid(context, "page_token is not valid; pass next_page_token from a previous reply")


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
        origin=row.origin,
        created_at_ms=_millis(row.created_at),
        updated_at_ms=_millis(row.updated_at),
        message_count=row.message_count,
        owner_id=str(row.owner_id),
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
