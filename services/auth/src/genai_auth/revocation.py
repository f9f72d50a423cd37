"""Revoked token ids: kept in PostgreSQL (the source of truth) and mirrored in Redis (the fast path).

Every revocation goes to PostgreSQL first, then to Redis; if Redis cannot take it, to a backlog table
that the upkeep loop of any auth process copies to Redis once Redis answers. A check asks Redis, and asks
PostgreSQL instead whenever Redis cannot be sure that its "not revoked" is complete:

- Redis fails, or is cooling off after a failure;
- the mirror lacks its completeness marker, a member added only after every unexpired row has been
  copied from PostgreSQL: a Redis that restarted empty, was flushed, or never had a copy has none;
- this process saw an outage begin and has not copied the backlog to Redis since (it may hold
  revocations that any process made while Redis was away). A process that saw no outage at all copies
  the backlog on its next upkeep tick, within about a second of Redis coming back.

The mirror is one sorted set (jti -> expiry) without a TTL, marker included. Its Redis is the state Redis,
which never evicts (noeviction; docs/operations.md, "Redis"): when full it refuses the ZADD, and the
revocation waits in the backlog. Should a Redis that evicts hold it after all, it goes as a whole key, so
the data never goes without its marker and checks ask PostgreSQL until the mirror is copied again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from genai_common.redis_guard import REDIS_ERRORS, RedisGuard
from genai_common.waiting import within

logger = logging.getLogger(__name__)

MIRROR_KEY = "auth:revocations"
# Not a token id (those are hex): the member that says the mirror is complete.
COMPLETE = "~complete"
# Where the service kept revocations before PostgreSQL did: one key with a TTL per token id.
LEGACY_PREFIX = "auth:revoked:"
BATCH = 1000
TICK_S = 1.0

_INSERT = "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING"


def _moment(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


class RevocationList:
    """Token ids (jti) that must no longer be accepted, each kept until its token would have expired."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        client: redis.Redis,
        guard: RedisGuard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._redis = client
        self._guard = guard
        self._clock = clock
        # guard.outages as it was when the backlog was last copied to Redis; None until the first copy,
        # since the backlog may hold revocations from before this process started.
        self._synced_outages: int | None = None
        self._sync_lock = asyncio.Lock()

    @property
    def guard(self) -> RedisGuard:
        return self._guard

    async def revoke(self, jti: str, expires_at: int) -> None:
        await self._pool.execute(_INSERT, jti, _moment(expires_at))
        await self._mirror(jti, expires_at)

    async def revoke_once(self, jti: str, expires_at: int) -> bool:
        """Revoke and report whether this call did it: False means someone revoked (or used) it first.

        PostgreSQL decides, in one INSERT ... ON CONFLICT DO NOTHING, so two concurrent refreshes with the
        same token cannot both succeed, with or without Redis.
        """
        first = await self._pool.fetchval(_INSERT + " RETURNING true", jti, _moment(expires_at))
        # Also when someone else was first: then Redis did not know (the check before let the token
        # through), and this repairs the mirror.
        await self._mirror(jti, expires_at)
        return bool(first)

    async def is_revoked(self, *ids: str) -> bool:
        """Whether any of `ids` is revoked: a token's jti and its chain's id, in one round trip."""
        if self._guard.available:
            try:
                *revoked, complete = await self._redis.zmscore(MIRROR_KEY, [*ids, COMPLETE])
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                if any(score is not None for score in revoked):
                    return True
                if complete is not None and self._synced_outages == self._guard.outages:
                    return False
        return bool(
            await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ANY($1::text[]))", list(ids)
            )
        )

    async def _mirror(self, jti: str, expires_at: int) -> None:
        if self._guard.available:
            try:
                await self._redis.zadd(MIRROR_KEY, {jti: expires_at})
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                return
        # A timed-out ZADD may have landed after all; copying it again later does no harm.
        await self._pool.execute(
            "INSERT INTO revocation_backlog (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
            jti,
            _moment(expires_at),
        )

    # --- keeping the mirror and the tables in shape -----------------------------------------------

    async def sync(self) -> None:
        """If Redis answers: fill it from PostgreSQL if the mirror is not complete, and copy the backlog.

        During an outage this is also the probe (once per cool-down) that notices Redis is back.
        """
        if not self._guard.available:
            return
        outages = self._guard.outages
        async with self._sync_lock:
            try:
                if await self._redis.zscore(MIRROR_KEY, COMPLETE) is None:
                    await self._resync()
                await self._flush_backlog()
            # Not REDIS_ERRORS: an OSError here may as well come from PostgreSQL, which is not Redis failing.
            except RedisError as exc:
                self._guard.failed(exc)
                return
            self._guard.succeeded()
            self._synced_outages = outages

    async def _add(self, rows: list[asyncpg.Record]) -> None:
        if rows:
            await self._redis.zadd(MIRROR_KEY, {row["jti"]: row["expires_at"].timestamp() for row in rows})

    async def _flush_backlog(self) -> None:
        copied = 0
        while True:
            rows = await self._pool.fetch(
                "SELECT jti, expires_at FROM revocation_backlog ORDER BY jti LIMIT $1", BATCH
            )
            if not rows:
                break
            await self._add(rows)
            await self._pool.execute(
                "DELETE FROM revocation_backlog WHERE jti = ANY($1::text[])", [row["jti"] for row in rows]
            )
            copied += len(rows)
        if copied:
            logger.info("copied %s revocations made while Redis was unreachable to Redis", copied)

    async def _resync(self) -> None:
        """Copy every unexpired revocation from PostgreSQL to Redis, then mark the mirror complete."""
        await self._adopt_legacy_keys()
        copied = 0
        after = ""
        while True:
            rows = await self._pool.fetch(
                "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > now() AND jti > $1 "
                "ORDER BY jti LIMIT $2",
                after,
                BATCH,
            )
            if not rows:
                break
            await self._add(rows)
            copied += len(rows)
            after = rows[-1]["jti"]
        await self._redis.zadd(MIRROR_KEY, {COMPLETE: math.inf})
        logger.info("revocations copied to Redis, which had none or lost them (%s unexpired)", copied)

    async def _adopt_legacy_keys(self) -> None:
        """Revocations that only Redis has, from before they were kept in PostgreSQL, join the table."""
        keys: list[bytes] = []
        found = 0
        async for key in self._redis.scan_iter(match=LEGACY_PREFIX + "*", count=BATCH):
            keys.append(key)
            if len(keys) >= BATCH:
                found += await self._adopt(keys)
                keys = []
        if keys:
            found += await self._adopt(keys)
        if found:
            logger.info("%s revocations found in Redis only are kept in PostgreSQL now", found)

    async def _adopt(self, keys: list[bytes]) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
            ttls = await pipe.execute()
        now = int(self._clock())
        jtis, moments = [], []
        for key, ttl in zip(keys, ttls, strict=True):
            if int(ttl) > 0:  # -2: gone since the scan; -1: not one of ours (ours always expired)
                jtis.append(key.decode()[len(LEGACY_PREFIX) :])
                moments.append(_moment(now + int(ttl)))
        if jtis:
            await self._pool.execute(
                "INSERT INTO revoked_tokens (jti, expires_at) "
                "SELECT * FROM unnest($1::text[], $2::timestamptz[]) ON CONFLICT (jti) DO NOTHING",
                jtis,
                moments,
            )
        return len(jtis)

    async def delete_expired(self) -> int:
        """Delete revocations of tokens that have expired anyway; returns how many rows went."""
        async with self._pool.acquire() as conn:
            await conn.execute("DELETE FROM revocation_backlog WHERE expires_at <= now()")
            status = await conn.execute("DELETE FROM revoked_tokens WHERE expires_at <= now()")
        if self._guard.available:
            try:
                await self._redis.zremrangebyscore(MIRROR_KEY, "-inf", self._clock())
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)  # the next round removes them; until then they are harmless
            else:
                self._guard.succeeded()
        return int(status.rsplit(" ", 1)[-1])

    async def maintain(
        self, cleanup_interval_s: float, *, stop: asyncio.Event, tick_s: float = TICK_S
    ) -> None:
        """Until `stop` is set: keep the Redis mirror complete, and delete expired rows now and then.

        Stopped by the event rather than by cancelling the task: a cancel that lands in the middle of an
        asyncpg query can leave the connection's release waiting forever.
        """
        next_cleanup = time.monotonic()
        while not stop.is_set():
            try:
                await self.sync()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + cleanup_interval_s
                    deleted = await self.delete_expired()
                    if deleted:
                        logger.info("deleted %s expired revocations", deleted)
            except Exception:
                # PostgreSQL away, most likely: the next tick tries again, and this task must not die.
                logger.warning("revocation upkeep failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await within(stop.wait(), tick_s)
