"""Retention: conversations untouched for longer than the retention period are deleted with their messages.

The service runs this on a timer (GENAI_HISTORY_RETENTION_INTERVAL_S); cron or a one-shot job can run it
with the same settings:

    python -m genai_history.retention --once

Audit events have a retention period of their own (GENAI_HISTORY_AUDIT_RETENTION_DAYS, 0 = forever): an
audit trail must outlive the dialogs it mentions.

Each run also forgets the records of deleted conversations (migration 0006) older than `TOMBSTONE_DAYS`.
With retention off they are kept, one small row per deleted conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from genai_common.db import create_pool
from genai_common.logs import setup_logging
from genai_common.settings import load_settings
from genai_history.settings import HistorySettings
from genai_history.store import ACQUIRE_TIMEOUT_S, DATABASE_DOWN

logger = logging.getLogger(__name__)

# Rows deleted per statement: short transactions keep locks brief on a large first run.
BATCH_SIZE = 1000

# How long a deleted conversation's id stays unusable: far longer than an exchange waits in a gateway's
# journal, which history being down for that long would have filled long before.
TOMBSTONE_DAYS = 30

# Rows locked by a writer right now (an exchange being appended) are left for the next run.
_DELETE_CONVERSATIONS = """
    WITH doomed AS (
        SELECT id FROM conversations WHERE updated_at < $1
        ORDER BY updated_at LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM conversations c USING doomed WHERE c.id = doomed.id
"""

# The append-only trigger lets a DELETE through only for rows older than the cutoff named in the same
# transaction (migration 0003).
_ALLOW_AUDIT_PURGE = "SELECT set_config('genai.audit_purge_before', $1, true)"
_DELETE_AUDIT_EVENTS = """
    DELETE FROM audit_events
    WHERE id IN (SELECT id FROM audit_events WHERE at < $1 ORDER BY id LIMIT $2)
"""

_DELETE_TOMBSTONES = """
    DELETE FROM deleted_conversations
    WHERE (id, owner_id) IN (
        SELECT id, owner_id FROM deleted_conversations WHERE deleted_at < $1 ORDER BY deleted_at LIMIT $2
    )
"""


@dataclass(frozen=True)
class PurgeResult:
    """How many rows one run deleted."""

    conversations: int
    audit_events: int
    tombstones: int = 0


def _deleted(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 42".
    return int(status.rsplit(" ", 1)[-1])


async def _in_batches(pool: asyncpg.Pool, statement: str, cutoff: datetime, batch_size: int) -> int:
    """Run a DELETE of at most `batch_size` rows older than `cutoff` until it deletes fewer; how many in all."""
    total = 0
    while True:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            deleted = _deleted(await conn.execute(statement, cutoff, batch_size))
        total += deleted
        if deleted < batch_size:
            return total


async def purge(
    pool: asyncpg.Pool,
    retention_days: int,
    audit_retention_days: int,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> PurgeResult:
    """Delete what is older than each retention period; a period of 0 keeps everything."""
    now = now or datetime.now(UTC)
    conversations = audit_events = 0
    if retention_days > 0:
        conversations = await _in_batches(
            pool, _DELETE_CONVERSATIONS, now - timedelta(days=retention_days), batch_size
        )
    if audit_retention_days > 0:
        cutoff = now - timedelta(days=audit_retention_days)
        while True:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                await conn.execute(_ALLOW_AUDIT_PURGE, cutoff.isoformat())
                deleted = _deleted(await conn.execute(_DELETE_AUDIT_EVENTS, cutoff, batch_size))
            audit_events += deleted
            if deleted < batch_size:
                break
    tombstones = await _in_batches(pool, _DELETE_TOMBSTONES, now - timedelta(days=TOMBSTONE_DAYS), batch_size)
    if conversations or audit_events or tombstones:
        logger.info(
            "retention deleted %d conversations, %d audit events and %d records of deleted conversations",
            conversations,
            audit_events,
            tombstones,
        )
    return PurgeResult(conversations=conversations, audit_events=audit_events, tombstones=tombstones)


def enabled(settings: HistorySettings) -> bool:
    return settings.retention_days > 0 or settings.audit_retention_days > 0


async def run_forever(pool: asyncpg.Pool, settings: HistorySettings) -> None:
    """Purge now and then every retention_interval_s, until cancelled. A database outage skips a run."""
    while True:
        try:
            await purge(pool, settings.retention_days, settings.audit_retention_days)
        except DATABASE_DOWN as exc:
            logger.warning("retention run skipped, database unavailable: %s", type(exc).__name__)
        except Exception:
            # A bug or a bad row must not end the loop for the life of the process: log it, try next time.
            logger.exception("retention run failed")
        await asyncio.sleep(settings.retention_interval_s)


async def _run_once(settings: HistorySettings) -> PurgeResult:
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=2)
    try:
        return await purge(pool, settings.retention_days, settings.audit_retention_days)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genai_history.retention",
        description="Delete conversations (and audit events) older than their retention periods.",
    )
    parser.add_argument("--once", action="store_true", required=True, help="run once and exit")
    parser.parse_args(argv)
    settings = load_settings(HistorySettings)
    setup_logging("history-retention", settings.log_level)
    if not enabled(settings):
        print("retention is off: GENAI_HISTORY_RETENTION_DAYS and _AUDIT_RETENTION_DAYS are 0")  # noqa: T201
        return 0
    result = asyncio.run(_run_once(settings))
    # A CLI's output is its interface.
    print(f"deleted {result.conversations} conversations and {result.audit_events} audit events")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
