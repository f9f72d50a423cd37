"""The audit log: who read or exported whose dialogs, and when. Rows are inserted, listed, never changed."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

ACTIONS = ("read_conversation", "export_conversation", "list_conversations", "export_user")

# Longest actor username and request id kept; both come from the gateway, this only bounds them.
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class AuditEntry:
    """An event about to be written: the admin, the action, and (once known) whose data it touched."""

    actor_id: uuid.UUID
    actor_username: str
    action: str
    request_id: str | None = None
    api_key_id: str | None = None
    target_owner_id: uuid.UUID | None = None
    target_conversation_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown audit action {self.action!r}")

    def about(
        self, *, owner_id: uuid.UUID | None = None, conversation_id: uuid.UUID | None = None
    ) -> AuditEntry:
        """The same event, naming the owner and conversation the read turned out to touch."""
        return replace(self, target_owner_id=owner_id, target_conversation_id=conversation_id)


@dataclass(frozen=True)
class AuditEventRow:
    """A stored event."""

    id: int
    at: datetime
    actor_id: uuid.UUID
    actor_username: str
    action: str
    target_owner_id: uuid.UUID | None
    target_conversation_id: uuid.UUID | None
    request_id: str
    details: dict[str, Any]


_INSERT = """
    INSERT INTO audit_events (actor_id, actor_username, action, target_owner_id, target_conversation_id,
                              request_id, details)
    VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
    RETURNING id
"""

_LIST_FIRST_PAGE = """
    SELECT id, at, actor_id, actor_username, action, target_owner_id, target_conversation_id, request_id,
           details::text AS details
    FROM audit_events
    ORDER BY id DESC
    LIMIT $1
"""

_LIST_NEXT_PAGE = """
    SELECT id, at, actor_id, actor_username, action, target_owner_id, target_conversation_id, request_id,
           details::text AS details
    FROM audit_events
    WHERE id < $2
    ORDER BY id DESC
    LIMIT $1
"""


async def insert_event(conn: asyncpg.Connection, entry: AuditEntry, details: dict[str, Any]) -> int:
    """Write one event on `conn` (inside the caller's transaction, if any); returns its id."""
    if entry.api_key_id:
        details = {**details, "api_key_id": entry.api_key_id}
    event_id: int = await conn.fetchval(
        _INSERT,
        entry.actor_id,
        entry.actor_username,
        entry.action,
        entry.target_owner_id,
        entry.target_conversation_id,
        entry.request_id or None,
        json.dumps(details),
    )
    return event_id


async def list_events(
    pool: asyncpg.Pool, limit: int, before_id: int | None, acquire_timeout_s: float
) -> tuple[list[AuditEventRow], int | None]:
    """Up to `limit` events, newest first, and the id the next page starts below (or None)."""
    async with pool.acquire(timeout=acquire_timeout_s) as conn:
        if before_id is None:
            rows = await conn.fetch(_LIST_FIRST_PAGE, limit + 1)
        else:
            rows = await conn.fetch(_LIST_NEXT_PAGE, limit + 1, before_id)
    events = [
        AuditEventRow(
            id=row["id"],
            at=row["at"],
            actor_id=row["actor_id"],
            actor_username=row["actor_username"],
            action=row["action"],
            target_owner_id=row["target_owner_id"],
            target_conversation_id=row["target_conversation_id"],
            request_id=row["request_id"] or "",
            details=json.loads(row["details"]),
        )
        for row in rows[:limit]
    ]
    return events, (events[-1].id if len(rows) > limit else None)
