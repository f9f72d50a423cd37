"""All SQL of the history service: conversations and messages, always scoped by owner."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from genai_history.paging import Cursor

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
COMPONENT = "history"

# A pool that stays exhausted this long is treated like a database that is down.
ACQUIRE_TIMEOUT_S = 5.0


class ConversationNotFound(LookupError):
    """The conversation does not exist or belongs to someone else (callers must not tell which)."""


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
class ConversationRow:
    """A conversation without its messages."""

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int


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


_LIST_FIRST_PAGE = """
    SELECT c.id, c.title, c.created_at, c.updated_at,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
    FROM conversations c
    WHERE c.owner_id = $1
    ORDER BY c.updated_at DESC, c.id DESC
    LIMIT $2
"""

# Two statements rather than one with "cursor IS NULL OR ...": a generic plan keeps the index range.
_LIST_NEXT_PAGE = """
    SELECT c.id, c.title, c.created_at, c.updated_at,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
    FROM conversations c
    WHERE c.owner_id = $1 AND (c.updated_at, c.id) < ($3::timestamptz, $4::uuid)
    ORDER BY c.updated_at DESC, c.id DESC
    LIMIT $2
"""

_GET_SUMMARY = """
    SELECT c.id, c.title, c.created_at, c.updated_at,
           (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS message_count
    FROM conversations c
    WHERE c.id = $1 AND c.owner_id = $2
"""

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
    INSERT INTO conversations (owner_id, title, created_at, updated_at)
    VALUES ($1, $2, COALESCE($3::timestamptz, now()), COALESCE($3::timestamptz, now()))
    RETURNING id
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

_DELETE_CONVERSATION = """
    DELETE FROM conversations WHERE id = $1 AND owner_id = $2 RETURNING id
"""


class HistoryStore:
    """Repository over an asyncpg pool. Every method takes the owner and never sees other owners' rows."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append_exchange(
        self, owner_id: uuid.UUID, conversation_id: uuid.UUID | None, title: str, exchange: Exchange
    ) -> tuple[uuid.UUID, uuid.UUID]:
        """Store one exchange, starting a conversation titled `title` when conversation_id is None.

        Returns (conversation_id, message_id). An exchange_id already stored for this owner returns the
        stored ids and writes nothing. Raises ConversationNotFound for a conversation the owner lacks.
        """
        if exchange.exchange_id is not None:
            stored = await self._find_exchange(owner_id, exchange.exchange_id)
            if stored is not None:
                return stored
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                if conversation_id is None:
                    conversation_id = await conn.fetchval(
                        _NEW_CONVERSATION, owner_id, title or None, exchange.created_at
                    )
                else:
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
                    # Another call stored the same exchange_id after our check: undo the conversation
                    # this call may have started and answer with the stored ids.
                    raise _ExchangeAlreadyStored
        except _ExchangeAlreadyStored:
            assert exchange.exchange_id is not None
            stored = await self._find_exchange(owner_id, exchange.exchange_id)
            if stored is None:
                raise RuntimeError("exchange vanished between conflict and lookup") from None
            return stored
        assert conversation_id is not None
        return conversation_id, message_id

    async def _find_exchange(
        self, owner_id: uuid.UUID, exchange_id: str
    ) -> tuple[uuid.UUID, uuid.UUID] | None:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(_FIND_EXCHANGE, owner_id, exchange_id)
        return None if row is None else (row["conversation_id"], row["id"])

    async def list_conversations(
        self, owner_id: uuid.UUID, limit: int, after: Cursor | None
    ) -> tuple[list[ConversationRow], Cursor | None]:
        """Up to `limit` conversations, newest updated first, and the cursor of the next page (or None)."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            # One extra row tells whether another page exists without a count.
            if after is None:
                rows = await conn.fetch(_LIST_FIRST_PAGE, owner_id, limit + 1)
            else:
                rows = await conn.fetch(_LIST_NEXT_PAGE, owner_id, limit + 1, after.updated_at, after.id)
        conversations = [_conversation(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return conversations, None
        last = conversations[-1]
        return conversations, Cursor(updated_at=last.updated_at, id=last.id)

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
        """Delete the conversation and (by cascade) its messages."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            if await conn.fetchval(_DELETE_CONVERSATION, conversation_id, owner_id) is None:
                raise ConversationNotFound(str(conversation_id))


def _conversation(row: asyncpg.Record) -> ConversationRow:
    return ConversationRow(
        id=row["id"],
        title=row["title"] or "",
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        message_count=row["message_count"],
    )


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
