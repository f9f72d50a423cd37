"""Writing exchanges to history so that none is lost when the history service is down.

A write that fails is kept in a Redis list (or, with Redis down too, in memory) and replayed by a
background loop, oldest first. Each exchange carries an id, and history stores an id once, so a replay that
races another gateway's replay, or repeats after a crash, never duplicates a message.

Once a write has failed, the following ones go straight to the spool until the loop has emptied it: a
hung history (or PostgreSQL behind it) then costs one request its deadline, not every request, and no
exchange overtakes the ones spooled before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

import grpc
import redis.asyncio as redis
from genai.history.v1 import history_pb2
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from genai_common.redis_guard import RedisGuard
from genai_gateway.clients import HistoryClient
from genai_gateway.errors import ApiError

logger = logging.getLogger(__name__)

SPOOL_KEY = "history:spool"
SPOOLED = Counter("genai_history_spooled_total", "Exchanges kept for a later write because history failed")
REPLAYED = Counter("genai_history_replayed_total", "Spooled exchanges written to history")
IN_MEMORY = Gauge("genai_history_spool_memory", "Spooled exchanges held in this process (Redis down)")
DEPTH = Gauge(
    "genai_history_spool_depth",
    "Exchanges waiting for the history service (Redis and this process), per drain",
)

# Errors that a retry will not fix: the exchange is logged and dropped instead of retried forever.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


class HistoryRecorder:
    def __init__(
        self,
        history: HistoryClient,
        client: redis.Redis,
        memory_limit: int = 10_000,
        guard: RedisGuard | None = None,
        max_spooled: int = 100_000,
    ) -> None:
        self.history = history
        self.redis = client
        self.guard = guard or RedisGuard()
        # Bounds, not a ring: once one is reached, `full` refuses new questions instead of dropping old answers.
        self.memory_limit = memory_limit
        self.max_spooled = max_spooled
        self._memory: deque[bytes] = deque()
        # Since a write failed, until the spool is empty again: write to the spool, not to history.
        self.failing = False

    async def record(self, exchange: history_pb2.AppendExchangeRequest) -> str:
        """Store one exchange; return its conversation id, or "" when it was spooled for later."""
        if self.failing:
            await self._spool(exchange.SerializeToString())
            return ""
        try:
            response = await self.history.append_exchange(exchange)
        except ApiError as exc:
            if exc.grpc_code in _PERMANENT:
                logger.error("history refused exchange %s: %s", exchange.exchange_id, exc.message)
                return ""
            logger.warning(
                "history unavailable (%s), spooling exchange %s", exc.grpc_code.name, exchange.exchange_id
            )
            self.failing = True
            await self._spool(exchange.SerializeToString())
            return ""
        return str(response.conversation_id)

    async def _spool(self, raw: bytes) -> None:
        SPOOLED.inc()
        if self.guard.available:
            try:
                await self.redis.rpush(SPOOL_KEY, raw)
                return
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
        self._memory.append(raw)
        IN_MEMORY.set(len(self._memory))

    async def full(self) -> bool:
        """Whether the spool has reached its bound while history is failing: new questions must wait then
        (503), so that no answer given has to be dropped. Costs nothing while history takes writes."""
        if not self.failing:
            return False
        return len(self._memory) >= self.memory_limit or await self.pending() >= self.max_spooled

    async def pending(self) -> int:
        in_redis = 0
        if self.guard.available:
            try:
                in_redis = int(await self.redis.llen(SPOOL_KEY))
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
        return in_redis + len(self._memory)

    async def _replay(self, raw: bytes) -> bool:
        """Write one spooled exchange; False when history is still unavailable."""
        exchange = history_pb2.AppendExchangeRequest.FromString(raw)
        try:
            await self.history.append_exchange(exchange)
        except ApiError as exc:
            if exc.grpc_code in _PERMANENT:
                logger.error("dropping spooled exchange %s: %s", exchange.exchange_id, exc.message)
                return True
            return False
        REPLAYED.inc()
        return True

    async def drain_once(self) -> int:
        """Replay what is spooled, oldest first, until done or history fails again; return how many."""
        written = 0
        while self._memory:
            if not await self._replay(self._memory[0]):
                return written
            self._memory.popleft()
            IN_MEMORY.set(len(self._memory))
            written += 1
        if not self.guard.available:
            return written
        try:
            while True:
                # Peek, write, then remove: a crash in between replays it later, and the exchange id
                # makes that replay harmless.
                raw = cast(bytes | None, await self.redis.lindex(SPOOL_KEY, 0))
                if raw is None:
                    # Empty (this process's and the shared list): history takes writes directly again.
                    self.failing = False
                    return written
                if not await self._replay(raw):
                    return written
                await self.redis.lrem(SPOOL_KEY, 1, raw)  # type: ignore[arg-type]  # bytes are fine
                written += 1
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            return written

    async def drain_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                written = await self.drain_once()
                DEPTH.set(await self.pending())
            except Exception:
                logger.exception("history spool replay failed")
                continue
            if written:
                logger.info("replayed %s spooled exchanges to history", written)
