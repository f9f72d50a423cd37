"""SQL over conversations and messages: owner-scoped calls, and the admin calls that audit every read."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from genai_history.audit import AuditEntry, insert_event
from genai_history.paging import Cursor, SearchCursor

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
COMPONENT = "history"

# A pool that stays exhausted this long is treated like a database that is down.
ACQUIRE_TIMEOUT_S = 5.0
# Errors that mean the database cannot be reached right now; callers may retry (or spool) on UNAVAILABLE.
DATABASE_DOWN = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)


class ConversationNotFound(LookupError):
    """The conversation does not exist or belongs to someone else (callers must not tell which)."""


class ExportTooLarge(Exception):
    """The export would exceed a cap; nothing was read beyond the counts."""

    def __init__(self, messages: int, text_bytes: int) -> None:
        super().__init__(f"{messages} messages, {text_bytes} bytes of text")
        self.messages = messages
        self.text_bytes = text_bytes


class _ExchangeAlreadyStored(Exception):
    """Raised inside the append transaction to roll it back when a concurrent replay won the race."""


@dataclass(frozen=True)
class Exchange:
    """One prompt and its response, as appended to a conversation."""

    prompt: str
    response: str
    source: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: int = 0
    request_id: str | None = None
    # None: the database's now().
    created_at: datetime | None = None
    exchange_id: str | None = None


@dataclass(frozen=True)
class Append:
    """One exchange of a batch (`append_exchanges`): where it goes and what it is."""

    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    # The conversation is started with this id (its title and origin below) unless it exists.
    start: bool
    title: str
    origin: str
    exchange: Exchange


@dataclass(frozen=True)
class ConversationRow:
    """A conversation without its messages."""

    id: uuid.UUID
    title: str
    # "chat" or "api": see migration 0004.
    origin: str
    created_at: datetime
    updated_at: datetime
    message_count: int
    owner_id: uuid.UUID


@dataclass(frozen=True)
class MessageRow:
    """One stored exchange."""

    id: uuid.UUID
    prompt: str
    response: str
    source: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: int
    request_id: str
    created_at: datetime


@dataclass(frozen=True)
class SearchHitRow:
    """A message that matched a search, with a plain-text snippet around the matches."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    conversation_title: str
    snippet: str
    created_at: datetime


@dataclass(frozen=True)
class ExportScope:
    """What an export covers: one conversation (of owner_id, if given) or every conversation of owner_id."""

    owner_id: uuid.UUID | None = None
    conversation_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if self.owner_id is None and self.conversation_id is None:
            raise ValueError("an export needs an owner or a conversation")


@dataclass(frozen=True)
class ExportCaps:
    """Largest export served: messages, and UTF-8 bytes of prompts and responses together."""

    max_messages: int
    max_text_bytes: int


# Every summary is read with these columns: the statements below differ only in their conditions.
_SUMMARY_COLUMNS = """
    c.id, c.owner_id, c.title, c.origin, c.created_at, c.updated_at,
    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
"""
_SUMMARY = f"SELECT {_SUMMARY_COLUMNS} FROM conversations c"  # noqa: S608 (fixed text)

_GET_SUMMARY = f"{_SUMMARY} WHERE c.id = $1 AND c.owner_id = $2"

_ADMIN_GET_SUMMARY = f"{_SUMMARY} WHERE c.id = $1"


def _list_page(
    limit: int, owner_id: uuid.UUID | None, origin: str | None, after: Cursor | None
) -> tuple[str, list[object]]:
    """The statement and arguments reading one page of a conversation list, newest updated first.

    Each combination of filters gets a statement of its own rather than one with "$n IS NULL OR ..." in
    it: asyncpg prepares every statement, and such a condition would keep a generic plan off the index
    range that matches the filters, (owner_id[, origin], updated_at, id) or ([origin, ]updated_at, id),
    walked newest first until the LIMIT. The text is made of fixed fragments only; every value is a
    parameter. One row more than the page tells whether another page exists without a count.
    """
    args: list[object] = [limit + 1]

    def param(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    conditions = []
    if owner_id is not None:
        conditions.append(f"c.owner_id = {param(owner_id)}")
    if origin is not None:
        conditions.append(f"c.origin = {param(origin)}")
    if after is not None:
        conditions.append(f"(c.updated_at, c.id) < ({param(after.at)}::timestamptz, {param(after.id)}::uuid)")
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"{_SUMMARY} {where} ORDER BY c.updated_at DESC, c.id DESC LIMIT $1", args


# The newest $3 messages, handed back oldest first.
_GET_MESSAGES = """
    SELECT * FROM (
        SELECT id, prompt, response, source, model, prompt_tokens, completion_tokens, total_tokens,
               latency_ms, request_id, created_at
        FROM messages
        WHERE conversation_id = $1 AND owner_id = $2
        ORDER BY created_at DESC, id DESC
        LIMIT $3
    ) newest
    ORDER BY created_at, id
"""

_FIND_EXCHANGE = """
    SELECT conversation_id, id FROM messages WHERE owner_id = $1 AND exchange_id = $2
"""

_NEW_CONVERSATION = """
    INSERT INTO conversations (owner_id, title, origin, created_at, updated_at)
    VALUES ($1, $2, $4, COALESCE($3::timestamptz, now()), COALESCE($3::timestamptz, now()))
    RETURNING id
"""

# A conversation whose id the caller chose (the gateway answers with it before the exchange is written): a
# repeat of the same exchange, or one that arrives after a later exchange of the conversation, finds it there.
# Not one its owner deleted: `_UNDO_DELETED_STARTS` follows it.
_START_CONVERSATION = """
    INSERT INTO conversations (id, owner_id, title, origin, created_at, updated_at)
    VALUES ($1, $2, $3, $5, COALESCE($4::timestamptz, now()), COALESCE($4::timestamptz, now()))
    ON CONFLICT (id) DO NOTHING
"""

# After a start, in the same transaction: a conversation its owner deleted (migration 0006) is not started
# again by a late repeat of its first exchange. A statement of its own, with a snapshot of its own, so that
# it also sees a delete that committed while the start waited for its row (ON CONFLICT waits for it), which
# a check inside the start, reading the records from before, would miss.
_UNDO_DELETED_STARTS = """
    DELETE FROM conversations c USING deleted_conversations d
    WHERE c.id = ANY($1::uuid[]) AND c.owner_id = ANY($2::uuid[]) AND d.id = c.id AND d.owner_id = c.owner_id
"""

# The batch forms of the statements above (`_append_keyed`): one statement over arrays for a whole batch.
_START_CONVERSATIONS = """
    INSERT INTO conversations (id, owner_id, title, origin, created_at, updated_at)
    SELECT s.id, s.owner_id, s.title, s.origin, COALESCE(s.at, now()), COALESCE(s.at, now())
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[])
        AS s(id, owner_id, title, origin, at)
    ON CONFLICT (id) DO NOTHING
"""

# Each conversation once, moved to its newest exchange of the batch; returns those the owner has.
_TOUCH_CONVERSATIONS = """
    UPDATE conversations c SET updated_at = GREATEST(c.updated_at, s.at)
    FROM (
        SELECT id, owner_id, max(COALESCE(at, now())) AS at
        FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(id, owner_id, at)
        GROUP BY id, owner_id
    ) s
    WHERE c.id = s.id AND c.owner_id = s.owner_id
    RETURNING c.id, c.owner_id
"""

# In the batch's order, so that exchanges of one moment keep it.
_INSERT_MESSAGES = """
    INSERT INTO messages (conversation_id, owner_id, exchange_id, prompt, response, source, model,
                          prompt_tokens, completion_tokens, total_tokens, latency_ms, request_id, created_at)
    SELECT s.conversation_id, s.owner_id, s.exchange_id, s.prompt, s.response, s.source, s.model,
           s.prompt_tokens, s.completion_tokens, s.total_tokens, s.latency_ms, s.request_id, COALESCE(s.at, now())
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::int[], $9::int[], $10::int[], $11::int[], $12::text[], $13::timestamptz[])
        WITH ORDINALITY AS s(conversation_id, owner_id, exchange_id, prompt, response, source, model,
                             prompt_tokens, completion_tokens, total_tokens, latency_ms, request_id, at, n)
    ORDER BY s.n
    ON CONFLICT (owner_id, exchange_id) DO NOTHING
    RETURNING id, conversation_id, owner_id, exchange_id
"""

_FIND_EXCHANGES = """
    SELECT m.conversation_id, m.id, m.owner_id, m.exchange_id
    FROM messages m JOIN unnest($1::uuid[], $2::text[]) AS s(owner_id, exchange_id)
        ON m.owner_id = s.owner_id AND m.exchange_id = s.exchange_id
"""

# A replayed exchange older than the conversation's last activity must not move it back in the list.
_TOUCH_CONVERSATION = """
    UPDATE conversations SET updated_at = GREATEST(updated_at, COALESCE($3::timestamptz, now()))
    WHERE id = $1 AND owner_id = $2
    RETURNING id
"""

_INSERT_MESSAGE = """
    INSERT INTO messages (conversation_id, owner_id, exchange_id, prompt, response, source, model,
                          prompt_tokens, completion_tokens, total_tokens, latency_ms, request_id, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, COALESCE($13::timestamptz, now()))
    ON CONFLICT (owner_id, exchange_id) DO NOTHING
    RETURNING id
"""

# The deletion is remembered (see `_UNDO_DELETED_STARTS`) in the same statement.
_DELETE_CONVERSATION = """
    WITH deleted AS (DELETE FROM conversations WHERE id = $1 AND owner_id = $2 RETURNING id, owner_id)
    INSERT INTO deleted_conversations (id, owner_id) SELECT id, owner_id FROM deleted
    ON CONFLICT (id, owner_id) DO UPDATE SET deleted_at = now()
    RETURNING id
"""

_RENAME_CONVERSATION = f"""
    UPDATE conversations c SET title = $3
    WHERE c.id = $1 AND c.owner_id = $2
    RETURNING {_SUMMARY_COLUMNS}
"""  # noqa: S608 (fixed text)

# Ranked by relevance (ts_rank over the generated search_vector column, migrations 0002 and 0005), then
# newest first; pages continue after the last hit's (rank, created_at, id). The query is read with the
# `russian` configuration (stems of both languages), or with `simple` when that leaves nothing of it (only
# stop words: "что", "IT"), after the same `ё` -> `е` as the column. The rank is computed for every match of
# the owner, which the GIN index finds; only the page's rows get a headline, which reads the whole text and
# marks matches with guillemets in the original text (its parser maps the words to the same lexemes): plain
# text, never markup.
_SEARCH = """
    WITH parsed AS (
        SELECT websearch_to_tsquery('russian', translate($2, 'ёЁ', 'еЕ')) AS stems,
               websearch_to_tsquery('simple', translate($2, 'ёЁ', 'еЕ')) AS words
    ),
    query AS (
        SELECT CASE WHEN numnode(stems) > 0 THEN stems ELSE words END AS q,
               CASE WHEN numnode(stems) > 0 THEN 'russian' ELSE 'simple' END::regconfig AS config
        FROM parsed
    ),
    ranked AS (
        SELECT m.id, m.conversation_id, m.created_at, ts_rank(m.search_vector, query.q) AS rank,
               m.prompt, m.response
        FROM messages m, query
        WHERE m.owner_id = $1 AND m.search_vector @@ query.q
    ),
    page AS (
        SELECT id, conversation_id, created_at, rank,
               left(prompt, 50000) || ' ' || left(response, 100000) AS text
        FROM ranked
        WHERE $4::real IS NULL OR (rank, created_at, id) < ($4::real, $5::timestamptz, $6::uuid)
        ORDER BY rank DESC, created_at DESC, id DESC
        LIMIT $3
    )
    SELECT page.id, page.conversation_id, c.title, page.created_at, page.rank,
           ts_headline(query.config, page.text, query.q,
                       'StartSel=«, StopSel=», MaxWords=30, MinWords=10, MaxFragments=2, '
                       'FragmentDelimiter=" … "') AS snippet
    FROM page JOIN conversations c ON c.id = page.conversation_id, query
    ORDER BY page.rank DESC, page.created_at DESC, page.id DESC
"""

_CONVERSATION_OWNER = "SELECT owner_id FROM conversations WHERE id = $1"

# Export filters by scope; the statements are fixed strings, only the values are parameters.

_EXPORT_COUNT = """
    SELECT count(*) AS messages,
           coalesce(sum(octet_length(m.prompt) + octet_length(m.response)), 0) AS text_bytes
    FROM messages m
    WHERE {}
"""

_EXPORT_ROWS = """
    SELECT c.id AS c_id, c.owner_id AS c_owner_id, c.title AS c_title, c.origin AS c_origin,
           c.created_at AS c_created_at, c.updated_at AS c_updated_at,
           count(*) OVER (PARTITION BY c.id) AS c_message_count,
           m.id, m.prompt, m.response, m.source, m.model, m.prompt_tokens, m.completion_tokens,
           m.total_tokens, m.latency_ms, m.request_id, m.created_at
    FROM conversations c JOIN messages m ON m.conversation_id = c.id
    WHERE {}
    ORDER BY c.updated_at DESC, c.id DESC, m.created_at, m.id
"""

# Statements per export scope: (count, rows). Fixed text; only the values are parameters.
_EXPORT_BY_CONVERSATION = (
    _EXPORT_COUNT.format("m.conversation_id = $1"),
    _EXPORT_ROWS.format("c.id = $1"),
)
_EXPORT_BY_OWNER = (
    _EXPORT_COUNT.format("m.owner_id = $1"),
    _EXPORT_ROWS.format("c.owner_id = $1"),
)


class HistoryStore:
    """Repository over an asyncpg pool. Every method takes the owner and never sees other owners' rows."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def append_exchange(
        self,
        owner_id: uuid.UUID,
        conversation_id: uuid.UUID | None,
        title: str,
        exchange: Exchange,
        origin: str = "api",
        start: bool = False,
    ) -> tuple[uuid.UUID, uuid.UUID]:
        """Store one exchange, starting a conversation titled `title` when conversation_id is None, or with
        conversation_id when `start` (unless it exists: a repeat).

        A new conversation gets `origin` ("chat" or "api"); an existing one keeps its own.

        Returns (conversation_id, message_id). An exchange_id already stored for this owner returns the
        stored ids and writes nothing. Raises ConversationNotFound for a conversation the owner lacks.
        """
        # No look-up first: a repeated exchange_id (a replay) is rare, and the insert's conflict finds it.
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                if conversation_id is None:
                    conversation_id = await conn.fetchval(
                        _NEW_CONVERSATION, owner_id, title or None, exchange.created_at, origin
                    )
                else:
                    if start:
                        await conn.execute(
                            _START_CONVERSATION,
                            conversation_id,
                            owner_id,
                            title or None,
                            exchange.created_at,
                            origin,
                        )
                        await conn.execute(_UNDO_DELETED_STARTS, [conversation_id], [owner_id])
                    touched = await conn.fetchval(
                        _TOUCH_CONVERSATION, conversation_id, owner_id, exchange.created_at
                    )
                    if touched is None:
                        raise ConversationNotFound(str(conversation_id))
                message_id = await conn.fetchval(
                    _INSERT_MESSAGE,
                    conversation_id,
                    owner_id,
                    exchange.exchange_id,
                    exchange.prompt,
                    exchange.response,
                    exchange.source,
                    exchange.model,
                    exchange.prompt_tokens,
                    exchange.completion_tokens,
                    exchange.total_tokens,
                    exchange.latency_ms,
                    exchange.request_id,
                    exchange.created_at,
                )
                if message_id is None:
                    # Stored before (a replay, or a concurrent call): undo the conversation this call may
                    # have started and answer with the stored ids.
                    raise _ExchangeAlreadyStored
        except _ExchangeAlreadyStored:
            assert exchange.exchange_id is not None
            stored = await self._find_exchange(owner_id, exchange.exchange_id)
            if stored is None:
                raise RuntimeError("exchange vanished between conflict and lookup") from None
            return stored
        assert conversation_id is not None
        return conversation_id, message_id

    async def append_exchanges(self, batch: list[Append]) -> list[tuple[uuid.UUID, uuid.UUID] | None]:
        """Store a batch of exchanges in one transaction: (conversation_id, message_id) for each, or None
        for one whose conversation the owner lacks (nothing of it is written).

        A handful of statements for the whole batch, each over arrays, instead of two or three per exchange:
        that, and one commit, is what makes the gateway's journal cheap. Nothing here raises for one
        exchange: a conversation that exists for another owner is only a row the update does not touch, and
        a stored exchange_id a `DO NOTHING`, so no exchange aborts the others. Exchanges are told apart by
        (owner, exchange_id); one without an exchange_id is stored on its own (`append_exchange`).
        """
        keyed = [item for item in batch if item.exchange.exchange_id]
        results: dict[int, tuple[uuid.UUID, uuid.UUID] | None] = {}
        if keyed:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                stored = await _append_keyed(conn, keyed)
            for item in keyed:
                results[id(item)] = stored.get((item.owner_id, item.exchange.exchange_id or ""))
        for item in batch:
            if not item.exchange.exchange_id:
                try:
                    results[id(item)] = await self.append_exchange(
                        item.owner_id,
                        item.conversation_id,
                        item.title,
                        item.exchange,
                        item.origin,
                        start=item.start,
                    )
                except ConversationNotFound:
                    results[id(item)] = None
        return [results[id(item)] for item in batch]

    async def _find_exchange(
        self, owner_id: uuid.UUID, exchange_id: str
    ) -> tuple[uuid.UUID, uuid.UUID] | None:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(_FIND_EXCHANGE, owner_id, exchange_id)
        return None if row is None else (row["conversation_id"], row["id"])

    async def list_conversations(
        self, owner_id: uuid.UUID, limit: int, after: Cursor | None, origin: str | None = None
    ) -> tuple[list[ConversationRow], Cursor | None]:
        """Up to `limit` conversations (of `origin` only, if given), newest updated first, and the cursor
        of the next page (or None)."""
        sql, args = _list_page(limit, owner_id, origin, after)
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(sql, *args)
        return _page(rows, limit)

    async def get_conversation(
        self, owner_id: uuid.UUID, conversation_id: uuid.UUID, max_messages: int
    ) -> tuple[ConversationRow, list[MessageRow]]:
        """The conversation and its newest `max_messages` messages, oldest first."""
        async with (
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            # One snapshot, so message_count agrees with the messages returned.
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            summary = await conn.fetchrow(_GET_SUMMARY, conversation_id, owner_id)
            if summary is None:
                raise ConversationNotFound(str(conversation_id))
            rows = await conn.fetch(_GET_MESSAGES, conversation_id, owner_id, max_messages)
        return _conversation(summary), [_message(row) for row in rows]

    async def delete_conversation(self, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        """Delete the conversation and (by cascade) its messages; its id cannot be started again."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            if await conn.fetchval(_DELETE_CONVERSATION, conversation_id, owner_id) is None:
                raise ConversationNotFound(str(conversation_id))

    async def rename_conversation(
        self, owner_id: uuid.UUID, conversation_id: uuid.UUID, title: str
    ) -> ConversationRow:
        """Give the conversation a new title; its place in the list (updated_at) stays."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(_RENAME_CONVERSATION, conversation_id, owner_id, title)
        if row is None:
            raise ConversationNotFound(str(conversation_id))
        return _conversation(row)

    async def search_messages(
        self, owner_id: uuid.UUID, query: str, limit: int, after: SearchCursor | None
    ) -> tuple[list[SearchHitRow], SearchCursor | None]:
        """The owner's messages matching a websearch-style query, most relevant then newest first, and the
        next page's cursor."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                _SEARCH,
                owner_id,
                query,
                limit + 1,
                after.rank if after else None,
                after.at if after else None,
                after.id if after else None,
            )
        hits = [
            SearchHitRow(
                message_id=row["id"],
                conversation_id=row["conversation_id"],
                conversation_title=row["title"] or "",
                snippet=row["snippet"],
                created_at=row["created_at"],
            )
            for row in rows[:limit]
        ]
        if len(rows) <= limit:
            return hits, None
        last = rows[limit - 1]
        return hits, SearchCursor(rank=last["rank"], at=last["created_at"], id=last["id"])

    async def export_messages(
        self, scope: ExportScope, caps: ExportCaps, audit: AuditEntry | None = None
    ) -> AsyncIterator[tuple[ConversationRow, MessageRow]]:
        """Every message in scope with its conversation; conversations newest updated first.

        Counts first and raises ExportTooLarge before reading any text when a cap would be exceeded;
        ConversationNotFound for a conversation export of a conversation missing (or not the owner's).
        With `audit`, the event is committed before the first message is handed out.
        """
        if scope.conversation_id is not None:
            (count_sql, rows_sql), key = _EXPORT_BY_CONVERSATION, scope.conversation_id
        else:
            (count_sql, rows_sql), key = _EXPORT_BY_OWNER, scope.owner_id
        async with (
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            # One snapshot: the counts checked against the caps are those of the rows streamed.
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            owner_id = scope.owner_id
            if scope.conversation_id is not None:
                # The owner check is made here, once, so the statements below need only the id.
                owner_id = await conn.fetchval(_CONVERSATION_OWNER, scope.conversation_id)
                if owner_id is None or (scope.owner_id is not None and owner_id != scope.owner_id):
                    raise ConversationNotFound(str(scope.conversation_id))
            counts = await conn.fetchrow(count_sql, key)
            if counts["messages"] > caps.max_messages or counts["text_bytes"] > caps.max_text_bytes:
                raise ExportTooLarge(counts["messages"], counts["text_bytes"])
            if audit is not None:
                # Its own connection and transaction, committed now: this one stays read-only until the
                # last row, and an export cut short by the client must still leave its record.
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as audit_conn:
                    await insert_event(
                        audit_conn,
                        audit.about(owner_id=owner_id, conversation_id=scope.conversation_id),
                        {"messages": counts["messages"], "text_bytes": counts["text_bytes"]},
                    )
            async for row in conn.cursor(rows_sql, key, prefetch=200):
                conversation = ConversationRow(
                    id=row["c_id"],
                    title=row["c_title"] or "",
                    origin=row["c_origin"],
                    created_at=row["c_created_at"],
                    updated_at=row["c_updated_at"],
                    message_count=row["c_message_count"],
                    owner_id=row["c_owner_id"],
                )
                yield conversation, _message(row)

    # --- admin reads: any owner's data, each one recorded in the audit log in the same transaction ---------

    async def admin_list_conversations(
        self,
        owner_id: uuid.UUID | None,
        limit: int,
        after: Cursor | None,
        audit: AuditEntry,
        origin: str | None = None,
    ) -> tuple[list[ConversationRow], Cursor | None]:
        """Like list_conversations, across owners when owner_id is None; audited as list_conversations."""
        sql, args = _list_page(limit, owner_id, origin, after)
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            rows = await conn.fetch(sql, *args)
            details: dict[str, object] = {
                "page_size": limit,
                "returned": min(len(rows), limit),
                "next_page": after is not None,
            }
            if origin is not None:
                details["origin"] = origin
            await insert_event(conn, audit.about(owner_id=owner_id), details)
        return _page(rows, limit)

    async def admin_get_conversation(
        self, conversation_id: uuid.UUID, max_messages: int, audit: AuditEntry
    ) -> tuple[ConversationRow, list[MessageRow]]:
        """Any owner's conversation; audited as read_conversation. A missing one is not recorded."""
        async with (
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            conn.transaction(isolation="repeatable_read"),
        ):
            summary = await conn.fetchrow(_ADMIN_GET_SUMMARY, conversation_id)
            if summary is None:
                raise ConversationNotFound(str(conversation_id))
            conversation = _conversation(summary)
            rows = await conn.fetch(_GET_MESSAGES, conversation_id, conversation.owner_id, max_messages)
            await insert_event(
                conn,
                audit.about(owner_id=conversation.owner_id, conversation_id=conversation_id),
                {"messages": len(rows)},
            )
        return conversation, [_message(row) for row in rows]


def _conversation(row: asyncpg.Record) -> ConversationRow:
    return ConversationRow(
        id=row["id"],
        title=row["title"] or "",
        origin=row["origin"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        message_count=row["message_count"],
        owner_id=row["owner_id"],
    )


def _page(rows: list[asyncpg.Record], limit: int) -> tuple[list[ConversationRow], Cursor | None]:
    conversations = [_conversation(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return conversations, None
    last = conversations[-1]
    return conversations, Cursor(at=last.updated_at, id=last.id)


def _message(row: asyncpg.Record) -> MessageRow:
    return MessageRow(
        id=row["id"],
        prompt=row["prompt"],
        response=row["response"],
        source=row["source"],
        model=row["model"] or "",
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        total_tokens=row["total_tokens"],
        latency_ms=row["latency_ms"],
        request_id=row["request_id"] or "",
        created_at=row["created_at"],
    )


async def _append_keyed(
    conn: asyncpg.Connection, batch: list[Append]
) -> dict[tuple[uuid.UUID, str], tuple[uuid.UUID, uuid.UUID]]:
    """The batch's exchanges (each with an exchange_id) stored: (owner, exchange_id) -> (conversation, message)
    for each that is stored now or was before; one missing from the result has no conversation of its owner."""
    starts = [item for item in batch if item.start]
    if starts:
        await conn.execute(
            _START_CONVERSATIONS,
            [i.conversation_id for i in starts],
            [i.owner_id for i in starts],
            [i.title or None for i in starts],
            [i.origin for i in starts],
            [i.exchange.created_at for i in starts],
        )
        await conn.execute(
            _UNDO_DELETED_STARTS, [i.conversation_id for i in starts], [i.owner_id for i in starts]
        )
    touched = {
        (row["id"], row["owner_id"])
        for row in await conn.fetch(
            _TOUCH_CONVERSATIONS,
            [i.conversation_id for i in batch],
            [i.owner_id for i in batch],
            [i.exchange.created_at for i in batch],
        )
    }
    writable = [i for i in batch if (i.conversation_id, i.owner_id) in touched]
    stored: dict[tuple[uuid.UUID, str], tuple[uuid.UUID, uuid.UUID]] = {}
    if not writable:
        return stored
    exchanges = [i.exchange for i in writable]
    inserted = await conn.fetch(
        _INSERT_MESSAGES,
        [i.conversation_id for i in writable],
        [i.owner_id for i in writable],
        [e.exchange_id for e in exchanges],
        [e.prompt for e in exchanges],
        [e.response for e in exchanges],
        [e.source for e in exchanges],
        [e.model for e in exchanges],
        [e.prompt_tokens for e in exchanges],
        [e.completion_tokens for e in exchanges],
        [e.total_tokens for e in exchanges],
        [e.latency_ms for e in exchanges],
        [e.request_id for e in exchanges],
        [e.created_at for e in exchanges],
    )
    for row in inserted:
        stored[(row["owner_id"], row["exchange_id"])] = (row["conversation_id"], row["id"])
    repeats = [i for i in writable if (i.owner_id, i.exchange.exchange_id) not in stored]
    if repeats:
        # Stored before (a repeat of a batch, or twice in this one): the stored ids.
        for row in await conn.fetch(
            _FIND_EXCHANGES, [i.owner_id for i in repeats], [i.exchange.exchange_id for i in repeats]
        ):
            stored[(row["owner_id"], row["exchange_id"])] = (row["conversation_id"], row["id"])
    return stored
