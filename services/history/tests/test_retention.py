"""Retention: old conversations go with their messages, audit events only by their own period."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from genai_common.db import create_pool, migrate
from genai_history import retention
from genai_history.store import COMPONENT, MIGRATIONS_DIR, Exchange, HistoryStore

from .support import make_settings

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
async def own_pool(new_database_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of this test's own: a purge deletes across owners."""
    await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR)
    db_pool = await create_pool(new_database_dsn, max_size=3)
    yield db_pool
    await db_pool.close()


async def conversation(pool: asyncpg.Pool, updated: datetime, messages: int = 1) -> uuid.UUID:
    store = HistoryStore(pool)
    owner = uuid.uuid4()
    conversation_id = None
    for i in range(messages):
        exchange = Exchange(prompt=f"p{i}", response="r", source="model", created_at=updated)
        conversation_id, _ = await store.append_exchange(owner, conversation_id, "t", exchange)
    assert conversation_id is not None
    return conversation_id


async def audit_event(pool: asyncpg.Pool, at: datetime) -> int:
    return await pool.fetchval(
        "INSERT INTO audit_events (actor_id, actor_username, action, at)"
        " VALUES ($1, 'admin', 'read_conversation', $2) RETURNING id",
        uuid.uuid4(),
        at,
    )


async def ids(pool: asyncpg.Pool, table: str) -> set:
    return {row["id"] for row in await pool.fetch(f"SELECT id FROM {table}")}  # noqa: S608 (fixed names)


async def test_deletes_conversations_older_than_the_period_with_their_messages(
    own_pool: asyncpg.Pool,
) -> None:
    old = await conversation(own_pool, NOW - timedelta(days=31), messages=3)
    kept = await conversation(own_pool, NOW - timedelta(days=29))
    event = await audit_event(own_pool, NOW - timedelta(days=400))

    result = await retention.purge(own_pool, retention_days=30, audit_retention_days=0, now=NOW)

    assert result == retention.PurgeResult(conversations=1, audit_events=0)
    assert await ids(own_pool, "conversations") == {kept}
    assert await own_pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", old) == 0
    assert await own_pool.fetchval("SELECT count(*) FROM messages") == 1
    # Audit events outlive the dialogs they mention unless their own period says otherwise.
    assert await ids(own_pool, "audit_events") == {event}


async def test_a_conversation_with_a_recent_message_is_kept(own_pool: asyncpg.Pool) -> None:
    store = HistoryStore(own_pool)
    started = await conversation(own_pool, NOW - timedelta(days=90))
    await store.append_exchange(
        (await own_pool.fetchval("SELECT owner_id FROM conversations WHERE id = $1", started)),
        started,
        "",
        Exchange(prompt="again", response="r", source="model", created_at=NOW - timedelta(days=1)),
    )
    assert (await retention.purge(own_pool, 30, 0, now=NOW)).conversations == 0
    assert await ids(own_pool, "conversations") == {started}


async def test_audit_events_have_their_own_period(own_pool: asyncpg.Pool) -> None:
    old = await audit_event(own_pool, NOW - timedelta(days=366))
    recent = await audit_event(own_pool, NOW - timedelta(days=364))
    kept = await conversation(own_pool, NOW - timedelta(days=1000))

    result = await retention.purge(own_pool, retention_days=0, audit_retention_days=365, now=NOW)

    assert result == retention.PurgeResult(conversations=0, audit_events=1)
    assert await ids(own_pool, "audit_events") == {recent}
    assert old not in await ids(own_pool, "audit_events")
    assert await ids(own_pool, "conversations") == {kept}


async def test_zero_keeps_everything(own_pool: asyncpg.Pool) -> None:
    await conversation(own_pool, NOW - timedelta(days=5000))
    await audit_event(own_pool, NOW - timedelta(days=5000))
    assert await retention.purge(own_pool, 0, 0, now=NOW) == retention.PurgeResult(0, 0)


async def test_deletes_in_batches_until_done(own_pool: asyncpg.Pool) -> None:
    for _ in range(5):
        await conversation(own_pool, NOW - timedelta(days=10))
        await audit_event(own_pool, NOW - timedelta(days=10))
    result = await retention.purge(own_pool, 1, 1, now=NOW, batch_size=2)
    assert result == retention.PurgeResult(conversations=5, audit_events=5)
    assert await ids(own_pool, "conversations") == set()


async def test_the_loop_purges_on_start_and_then_on_its_interval(
    own_pool: asyncpg.Pool, new_database_dsn: str
) -> None:
    settings = make_settings(new_database_dsn, retention_days=1, retention_interval_s=0.2)
    await conversation(own_pool, datetime.now(UTC) - timedelta(days=2))
    task = asyncio.create_task(retention.run_forever(own_pool, settings))
    try:
        for _ in range(50):
            if not await ids(own_pool, "conversations"):
                break
            await asyncio.sleep(0.1)
        assert await ids(own_pool, "conversations") == set()
        # A later one is caught by a later run.
        await conversation(own_pool, datetime.now(UTC) - timedelta(days=3))
        for _ in range(50):
            if not await ids(own_pool, "conversations"):
                break
            await asyncio.sleep(0.1)
        assert await ids(own_pool, "conversations") == set()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GENAI_HISTORY_")},
        "GENAI_HISTORY_DATABASE_URL": dsn,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "genai_history.retention", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_one_shot_command(own_pool: asyncpg.Pool, new_database_dsn: str) -> None:
    await conversation(own_pool, datetime.now(UTC) - timedelta(days=40))
    kept = await conversation(own_pool, datetime.now(UTC) - timedelta(days=1))

    off = await asyncio.to_thread(_cli, new_database_dsn, "--once")
    assert off.returncode == 0, off.stderr
    assert "retention is off" in off.stdout
    assert len(await ids(own_pool, "conversations")) == 2

    done = await asyncio.to_thread(_cli, new_database_dsn, "--once", GENAI_HISTORY_RETENTION_DAYS="30")
    assert done.returncode == 0, done.stderr
    assert "deleted 1 conversations and 0 audit events" in done.stdout
    assert await ids(own_pool, "conversations") == {kept}

    without_once = await asyncio.to_thread(_cli, new_database_dsn)
    assert without_once.returncode == 2
    assert "--once" in without_once.stderr


async def test_records_of_deleted_conversations_are_forgotten_after_their_period(
    own_pool: asyncpg.Pool,
) -> None:
    store = HistoryStore(own_pool)
    owner = uuid.uuid4()
    old, recent = uuid.uuid4(), uuid.uuid4()
    for conversation_id in (old, recent):
        exchange = Exchange(prompt="p", response="r", source="model", created_at=NOW)
        await store.append_exchange(owner, conversation_id, "t", exchange, start=True)
        await store.delete_conversation(owner, conversation_id)
    await own_pool.execute(
        "UPDATE deleted_conversations SET deleted_at = $2 WHERE id = $1",
        old,
        NOW - timedelta(days=retention.TOMBSTONE_DAYS + 1),
    )
    await own_pool.execute("UPDATE deleted_conversations SET deleted_at = $2 WHERE id = $1", recent, NOW)

    result = await retention.purge(own_pool, retention_days=0, audit_retention_days=0, now=NOW)

    assert result.tombstones == 1
    assert {r["id"] for r in await own_pool.fetch("SELECT id FROM deleted_conversations")} == {recent}
