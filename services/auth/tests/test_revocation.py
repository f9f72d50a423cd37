"""Revocations kept in PostgreSQL and mirrored in Redis: what each side holds, and how the mirror is kept
complete after a Redis outage, a Redis that lost its data, or an upgrade from Redis-only revocations."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from genai_auth.revocation import COMPLETE, LEGACY_PREFIX, MIRROR_KEY, RevocationList
from genai_common.redis_client import create_redis
from genai_common.redis_guard import RedisGuard
from genai_devstack import infra

CALL_TIMEOUT_S = 5.0


async def _in_redis(client: Redis, member: str) -> bool:
    """Whether the Redis mirror holds a token id (or its completeness marker, COMPLETE)."""
    return await client.zscore(MIRROR_KEY, member) is not None


def _jti() -> str:
    return uuid.uuid4().hex


async def _row(pool: asyncpg.Pool, jti: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT jti, expires_at FROM revoked_tokens WHERE jti = $1", jti)


async def _eventually(check: Callable[[], object], what: str, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def own_client(own_redis: infra.Service) -> AsyncIterator[Redis]:
    client = create_redis(own_redis.url)
    yield client
    await client.aclose()


async def test_revoke_writes_postgres_and_redis(pool: asyncpg.Pool, redis_client: Redis) -> None:
    revocations = RevocationList(pool, redis_client, RedisGuard())
    jti, expires_at = _jti(), int(time.time()) + 600
    await revocations.revoke(jti, expires_at)
    row = await _row(pool, jti)
    assert row is not None and int(row["expires_at"].timestamp()) == expires_at
    assert await redis_client.zscore(MIRROR_KEY, jti) == expires_at  # removed once the token expires
    assert await revocations.is_revoked(jti)
    assert not await revocations.is_revoked(_jti())
    # Revoking again is harmless.
    await revocations.revoke(jti, expires_at)


async def _in_backlog(pool: asyncpg.Pool, jti: str) -> bool:
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM revocation_backlog WHERE jti = $1)", jti))


async def test_revoke_once_is_decided_by_postgres_without_redis(pool: asyncpg.Pool) -> None:
    dead = create_redis(f"redis://127.0.0.1:{infra.free_port()}/0")
    try:
        revocations = RevocationList(pool, dead, RedisGuard(cooldown_s=0.1))
        jti, expires_at = _jti(), int(time.time()) + 600
        results = await asyncio.gather(*(revocations.revoke_once(jti, expires_at) for _ in range(20)))
        assert results.count(True) == 1
        assert await _row(pool, jti) is not None
        # Not in Redis, so left for the upkeep loop to copy there once Redis answers.
        assert await _in_backlog(pool, jti)
        assert revocations.guard.degraded
        assert await revocations.is_revoked(jti)
    finally:
        await dead.aclose()


async def test_redis_answers_once_it_holds_a_complete_copy(
    pool: asyncpg.Pool, own_client: Redis, own_redis: infra.Service
) -> None:
    revocations = RevocationList(pool, own_client, RedisGuard())
    only_in_postgres = _jti()
    await pool.execute(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, now() + interval '10 minutes')",
        only_in_postgres,
    )
    # A new Redis does not vouch for itself: PostgreSQL answers.
    assert not await _in_redis(own_client, COMPLETE)
    assert await revocations.is_revoked(only_in_postgres)

    await revocations.sync()
    assert await _in_redis(own_client, COMPLETE)
    assert await _in_redis(own_client, only_in_postgres)
    assert abs(await own_client.zscore(MIRROR_KEY, only_in_postgres) - (time.time() + 600)) < 10

    # From now on Redis answers first: a row slipped into PostgreSQL behind the service's back is not
    # looked up (which shows that PostgreSQL is not asked while Redis can answer).
    behind_the_back = _jti()
    await pool.execute(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, now() + interval '10 minutes')",
        behind_the_back,
    )
    assert not await revocations.is_revoked(behind_the_back)
    assert await revocations.is_revoked(only_in_postgres)


async def test_redis_that_lost_its_data_is_not_believed_until_resynced(
    pool: asyncpg.Pool, own_redis: infra.Service, work_dir: Path
) -> None:
    client = create_redis(own_redis.url)
    revocations = RevocationList(pool, client, RedisGuard(cooldown_s=0.1))
    stop = asyncio.Event()
    upkeep = asyncio.create_task(revocations.maintain(60, stop=stop, tick_s=0.05))
    restarted: infra.Service | None = None
    try:
        await _eventually(lambda: _in_redis(client, COMPLETE), "first copy")
        jti = _jti()
        await revocations.revoke(jti, int(time.time()) + 600)
        assert await _in_redis(client, jti)

        # Restarted without persistence: everything it held is gone, the marker with it.
        own_redis.stop()
        restarted = infra.start_local_redis(work_dir / f"redis-again-{_jti()[:6]}", own_redis.port)
        assert await asyncio.wait_for(revocations.is_revoked(jti), CALL_TIMEOUT_S)
        # A client of the test's own: the service's pool may still hold connections to the old server.
        watcher = create_redis(restarted.url)
        try:
            # The marker comes last, after every revocation.
            await _eventually(lambda: _in_redis(watcher, COMPLETE), "new Redis filled")
            assert await _in_redis(watcher, jti)
        finally:
            await watcher.aclose()
        assert await revocations.is_revoked(jti)
    finally:
        stop.set()
        await asyncio.wait_for(upkeep, 10)
        await client.aclose()
        if restarted is not None:
            restarted.stop()


async def test_revocations_only_in_redis_are_kept(
    pool: asyncpg.Pool, own_client: Redis, own_redis: infra.Service
) -> None:
    # What the service did before PostgreSQL kept revocations: a key with the token's remaining life.
    jti = _jti()
    await own_client.set(LEGACY_PREFIX + jti, b"1", ex=900)
    revocations = RevocationList(pool, own_client, RedisGuard(cooldown_s=0.1))
    await revocations.sync()
    row = await _row(pool, jti)
    assert row is not None
    assert abs(row["expires_at"].timestamp() - (time.time() + 900)) < 10
    assert await _in_redis(own_client, COMPLETE)

    # So it stays revoked when Redis is gone.
    own_redis.stop()
    assert await asyncio.wait_for(revocations.is_revoked(jti), CALL_TIMEOUT_S)


async def test_revocations_made_during_an_outage_reach_redis_through_another_process(
    pool: asyncpg.Pool, own_client: Redis, own_redis: infra.Service
) -> None:
    # Two auth processes on one Redis. The first cannot reach it (a real client aimed at a port nobody
    # listens on: a SET sent to a stopped Redis would still land once it resumes), revokes a token, and
    # goes away. The second sees Redis hang meanwhile.
    survivor = RevocationList(pool, own_client, RedisGuard(cooldown_s=0.1))
    await survivor.sync()
    assert await _in_redis(own_client, COMPLETE)
    jti = _jti()
    cut_off = create_redis(f"redis://127.0.0.1:{infra.free_port()}/0")
    try:
        gone = RevocationList(pool, cut_off, RedisGuard(cooldown_s=0.1))
        await asyncio.wait_for(gone.revoke(jti, int(time.time()) + 600), CALL_TIMEOUT_S)
    finally:
        await cut_off.aclose()
    assert await _in_backlog(pool, jti)
    pid = own_redis.process.pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert await asyncio.wait_for(survivor.is_revoked(jti), CALL_TIMEOUT_S)  # via PostgreSQL
        assert survivor.guard.degraded
    finally:
        os.kill(pid, signal.SIGCONT)
    # Redis is back with its data and marker but without the revocation. The survivor saw the outage,
    # so it does not believe Redis's "not revoked" before it has copied the backlog.
    assert not await _in_redis(own_client, jti)
    await asyncio.sleep(0.2)  # past the cool-down, so that the check asks Redis
    assert await survivor.is_revoked(jti)
    assert not survivor.guard.degraded  # Redis answered; PostgreSQL had the last word all the same

    async def copied() -> bool:
        await survivor.sync()
        return not survivor.guard.degraded and bool(await _in_redis(own_client, jti))

    await _eventually(copied, "backlog copied to Redis")
    assert not await _in_backlog(pool, jti)
    assert await survivor.is_revoked(jti)


async def test_expired_rows_are_deleted(pool: asyncpg.Pool, redis_client: Redis) -> None:
    expired, alive = _jti(), _jti()
    for table in ("revoked_tokens", "revocation_backlog"):
        await pool.execute(
            f"INSERT INTO {table} (jti, expires_at) VALUES ($1, now() - interval '1 second'), "  # noqa: S608
            "($2, now() + interval '1 hour')",
            expired,
            alive,
        )
    await redis_client.zadd(MIRROR_KEY, {expired: time.time() - 1, alive: time.time() + 3600})
    try:
        assert await RevocationList(pool, redis_client, RedisGuard()).delete_expired() >= 1
        assert not await _in_redis(redis_client, expired)
        assert await _in_redis(redis_client, alive)
        assert await _row(pool, expired) is None
        assert await _row(pool, alive) is not None
        assert not await _in_backlog(pool, expired)
        assert await _in_backlog(pool, alive)
    finally:
        await pool.execute("DELETE FROM revocation_backlog WHERE jti = $1", alive)


async def test_the_upkeep_loop_deletes_expired_rows(pool: asyncpg.Pool, redis_client: Redis) -> None:
    expired = _jti()
    await pool.execute(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, now() - interval '1 second')", expired
    )
    revocations = RevocationList(pool, redis_client, RedisGuard())
    stop = asyncio.Event()
    upkeep = asyncio.create_task(revocations.maintain(cleanup_interval_s=0.1, stop=stop, tick_s=0.05))
    try:
        await _eventually(lambda: _gone(pool, expired), "expired row deleted")
    finally:
        stop.set()
        await asyncio.wait_for(upkeep, 10)


async def _gone(pool: asyncpg.Pool, jti: str) -> bool:
    return await _row(pool, jti) is None
