"""Writing exchanges to history off the answer's path, so that none is lost and none is waited for.

An answer is given once its exchange is in the journal: a list in the state Redis (no eviction, an
append-only file), which takes one round trip instead of the history call and its PostgreSQL commit. A
background loop in each gateway writes the journal to history in batches, oldest first, one database
transaction a batch (`AppendExchanges`), and only then removes them. The gateway picks a new conversation's
id itself (history starts the conversation with it), so the caller gets the id at once.

What keeps this honest:
- nothing is lost: an exchange leaves the journal only after history stored it; a gateway that dies between
  the two leaves it for the next pass (any gateway's), and the exchange id makes a second write harmless;
- the user's own next read sees it: every read of history waits for a pass that started after it was asked
  (`flush`), which writes what any gateway journaled before; reads cost one LLEN while the journal is empty;
- with history down, the journal grows until `max_spooled`, then new questions get 503 (`full`) instead of
  an answer having to be dropped; with Redis down too, exchanges wait in this process's memory, bounded the
  same way; with Redis down and history up, each exchange is written at once, as before the journal.

Failure -> what happens:
- history unavailable or late: the batch stays in the journal; passes retry every `interval_s`;
- history refuses one exchange (INVALID_ARGUMENT, NOT_FOUND: its conversation was deleted): logged, dropped;
- a history without `AppendExchanges` (a rolling upgrade): exchanges are written one at a time;
- Redis failing: new exchanges are written at once, or kept in memory; the journal waits for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import grpc
import redis.asyncio as redis
from genai.history.v1 import history_pb2
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from genai_common.redis_guard import RedisGuard
from genai_common.waiting import within
from genai_gateway.clients import HistoryClient
from genai_gateway.errors import ApiError

logger = logging.getLogger(__name__)

# The journal's key: the name the spool of earlier releases had, so that an upgrade drains what it left.
SPOOL_KEY = "history:spool"
# Exchanges and bytes of one batch: well under gRPC's 4 MiB message cap, and one transaction in history.
BATCH_EXCHANGES = 100
BATCH_BYTES = 1 << 20
# How long a pass woken by a new exchange waits for more before it looks: without it, each pass would find
# the one or two exchanges journaled during the last, and the gateway, history and PostgreSQL would pay a
# call, a transaction and their logs for each (a request's worth of CPU at one request at a time). Not
# waited when a read waits for the pass (`flush`), nor once a whole batch is journaled here.
BATCH_LINGER_S = 0.05
JOURNALED = Counter("genai_history_journaled_total", "Exchanges put in the journal for history")
SPOOLED = Counter(
    "genai_history_spooled_total", "Exchanges that waited for history because a write to it failed"
)
REPLAYED = Counter("genai_history_replayed_total", "Journaled exchanges written to history")
IN_MEMORY = Gauge("genai_history_spool_memory", "Exchanges held in this process (Redis down)")
DEPTH = Gauge(
    "genai_history_spool_depth",
    "Exchanges waiting for the history service (Redis and this process), per drain",
)

# How a record gets into the journal (a list): (key, record) -> appended, or a Redis error.
Append = Callable[[str, bytes], Awaitable[object]]
# Errors that a retry will not fix: the exchange is logged and dropped instead of retried forever.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
# One gateway at a time writes the journal: passes of several would each write the same head (stored once,
# thanks to the exchange ids, but paid for by history and PostgreSQL each time). The turn is a key held for
# a pass and renewed with each batch; a gateway that dies holding it lets go when it expires. A pass that
# finds another gateway's turn is skipped and tried again `BATCH_LINGER_S` later, unless a read waits for it:
# then it waits for the turn (every `TURN_POLL_S`), for a third of history's deadline at most, and then writes
# without the turn: the holder may have died in its pass, leaving its turn to run out its lease (seconds),
# and the read would otherwise go on without the newest exchanges until then.
TURN_SUFFIX = ":writer"
TURN_POLL_S = 0.005
TURN_WAIT_SHARE = 1 / 3
# Removes the written exchanges (each is unique, its exchange id, and near the head, where LREM starts),
# and renews this gateway's turn. KEYS: journal, turn.  ARGV: turn token, lease ms, exchanges.
_FORGET = """
for i = 3, #ARGV do redis.call('LREM', KEYS[1], 1, ARGV[i]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return #ARGV - 2
"""
# Takes the turn, free or already this gateway's (a pass that could not end it, Redis failing).
# KEYS: turn.  ARGV: turn token, lease ms.
_TAKE_TURN = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Ends this gateway's turn, if it still holds it.  KEYS: turn.  ARGV: turn token.
_END_TURN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class HistoryRecorder:
    def __init__(
        self,
        history: HistoryClient,
        client: redis.Redis,
        memory_limit: int = 10_000,
        guard: RedisGuard | None = None,
        max_spooled: int = 100_000,
        key: str = SPOOL_KEY,
    ) -> None:
        self.history = history
        self.key = key
        self.redis = client
        self.guard = guard or RedisGuard()
        # Bounds, not a ring: once one is reached, `full` refuses new questions instead of dropping old answers.
        self.memory_limit = memory_limit
        self.max_spooled = max_spooled
        self._memory: deque[bytes] = deque()
        # Since a write failed, until the journal is empty again: passes wait for their interval, not for
        # each new exchange, and `full` counts what waits.
        self.failing = False
        self._forget = client.register_script(_FORGET)
        self._take = client.register_script(_TAKE_TURN)
        self._end_turn = client.register_script(_END_TURN)
        self._turn = (key + TURN_SUFFIX, secrets.token_hex(8))
        # Longer than a batch's write may take (history's deadline covers its retries).
        self._turn_lease_ms = int(max(10.0, 3 * history.timeout_s) * 1000)
        self._turn_wait_s = history.timeout_s * TURN_WAIT_SHARE
        # The last pass found another gateway writing the journal.
        self._skipped = False
        self._wake = asyncio.Event()
        # Set by a read waiting for the next pass, or a batch's worth journaled: the pass does not linger.
        self._hurry = asyncio.Event()
        # Exchanges journaled here since the last pass began.
        self._since_pass = 0
        self._pass_lock = asyncio.Lock()
        # Done when the next pass to start has finished: what `flush` waits for.
        self._upcoming: asyncio.Future[None] | None = None
        self._looping = False

    async def record(self, exchange: history_pb2.AppendExchangeRequest, append: Append | None = None) -> str:
        """Keep one exchange for history; return its conversation id ("" only when history refused it).

        `append(key, record)` puts the record in the journal instead of a plain RPUSH: another command's round
        trip may carry it (the request's settle, `Quotas.settle_and_append`)."""
        if not exchange.conversation_id:
            exchange.conversation_id = str(uuid.uuid4())
            exchange.start_conversation = True
        raw = exchange.SerializeToString()
        if self.guard.available:
            try:
                if append is None:
                    await self.redis.rpush(self.key, raw)
                else:
                    await append(self.key, raw)
                JOURNALED.inc()
                if self.failing:
                    SPOOLED.inc()
                else:
                    self._wake.set()
                    self._since_pass += 1
                    if self._since_pass >= BATCH_EXCHANGES:
                        self._hurry.set()
                return exchange.conversation_id
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
        if not self.failing:
            # No journal: written now, as the answer's last step.
            try:
                await self.history.append_exchange(exchange)
                return exchange.conversation_id
            except ApiError as exc:
                if exc.grpc_code in _PERMANENT:
                    logger.error("history refused exchange %s: %s", exchange.exchange_id, exc.message)
                    return ""
                logger.warning(
                    "history unavailable (%s), keeping exchange %s", exc.grpc_code.name, exchange.exchange_id
                )
                self.failing = True
        SPOOLED.inc()
        self._memory.append(raw)
        IN_MEMORY.set(len(self._memory))
        return exchange.conversation_id

    async def full(self) -> bool:
        """Whether what waits has reached its bound while history is failing: new questions must wait then
        (503), so that no answer given has to be dropped. Costs nothing while history takes writes."""
        if not self.failing:
            return False
        return len(self._memory) >= self.memory_limit or await self.pending() >= self.max_spooled

    async def pending(self) -> int:
        in_redis = 0
        if self.guard.available:
            try:
                in_redis = int(await self.redis.llen(self.key))
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
        return in_redis + len(self._memory)

    async def flush(self) -> None:
        """Wait until what any gateway journaled before now is in history, so that a read that follows sees
        it; give up (the read goes on) when history fails or takes longer than its deadline."""
        if not self._memory and not await self._journal_waits():
            return
        try:
            if not self._looping:
                await within(self.drain_once(), self.history.timeout_s)
                return
            if self._upcoming is None:
                self._upcoming = asyncio.get_running_loop().create_future()
            upcoming = self._upcoming
            self._wake.set()
            self._hurry.set()
            await within(asyncio.shield(upcoming), self.history.timeout_s)
        except TimeoutError:
            logger.warning("history did not take the journal in time; reading without the newest exchanges")

    async def _journal_waits(self) -> bool:
        if not self.guard.available:
            return False
        try:
            return bool(await self.redis.llen(self.key))
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            return False

    async def drain_once(self, *, wait: bool = True) -> int:
        """Write what waits, oldest first, in batches, until done or history fails; return how many.

        The journal is written in this gateway's turn (`TURN_SUFFIX`); `wait=False`: not at all while another
        gateway has the turn (`_skipped`), which writes what it finds."""
        async with self._pass_lock:
            return await self._drain(wait)

    async def _take_turn(self, wait: bool) -> bool:
        """False when another gateway has the turn (and `wait` is False). True also when Redis refuses to give
        it (full: the turn is a write), or when another gateway keeps it longer than `_turn_wait_s`: the pass
        goes on without one, since a batch written twice is stored once, and writing the journal is what
        frees Redis's memory and what a waiting read needs."""
        key, token = self._turn
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._turn_wait_s
        try:
            while not await self._take(keys=[key], args=[token, self._turn_lease_ms]):
                if not wait:
                    return False
                if loop.time() >= give_up_at:
                    logger.warning(
                        "another gateway has held the history journal's turn for %.1f s (it may have stopped "
                        "in a pass); a read waits, so this gateway writes without the turn",
                        self._turn_wait_s,
                    )
                    return True
                await asyncio.sleep(TURN_POLL_S)
        except (RedisError, OSError) as exc:
            logger.debug("writing the journal without a turn: %s", exc)
        return True

    async def _drain(self, wait: bool = True) -> int:
        written = 0
        while self._memory:
            batch = _batch(self._memory)
            if not await self._write(batch):
                return written
            for _ in batch:
                self._memory.popleft()
            IN_MEMORY.set(len(self._memory))
            written += len(batch)
        if not self.guard.available:
            # History took what waited here; the journal in Redis waits for Redis.
            self.failing = False
            return written
        self._skipped = False
        try:
            # An empty journal needs no turn: a pass that finds nothing writes nothing to Redis.
            if not await self.redis.llen(self.key):
                self.failing = False
                return written
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            return written
        if not await self._take_turn(wait):
            self._skipped = True
            return written
        try:
            while True:
                head = cast(list[bytes], await self.redis.lrange(self.key, 0, BATCH_EXCHANGES - 1))
                if not head:
                    # Empty (this process's and the shared journal): new exchanges wake the loop again.
                    self.failing = False
                    return written
                batch = _batch(head)
                # Written, then removed: a crash in between writes them again later, which the exchange ids
                # make harmless.
                if not await self._write(batch):
                    return written
                await self._forget(
                    keys=[self.key, self._turn[0]], args=[self._turn[1], self._turn_lease_ms, *batch]
                )
                written += len(batch)
                if len(batch) == len(head) < BATCH_EXCHANGES:
                    # All there was when this pass looked: an exchange journaled since has woken the loop for
                    # the next pass, so asking Redis again now would only find it a moment earlier.
                    self.failing = False
                    return written
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            return written
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self._end_turn(keys=[self._turn[0]], args=[self._turn[1]])

    async def _write(self, batch: list[bytes]) -> bool:
        """Store a batch in history; False (nothing to remove) when history is unavailable."""
        exchanges = [history_pb2.AppendExchangeRequest.FromString(raw) for raw in batch]
        try:
            reply = await self.history.append_exchanges(
                history_pb2.AppendExchangesRequest(exchanges=exchanges)
            )
        except ApiError as exc:
            if exc.grpc_code not in (grpc.StatusCode.UNIMPLEMENTED, *_PERMANENT):
                await self._failed(exc)
                return False
            # An older history, or a batch it refuses as a whole: one at a time, each dropped on its own.
            for exchange in exchanges:
                if not await self._write_one(exchange):
                    return False
            return True
        for exchange, result in zip(exchanges, reply.results, strict=True):
            if result.error_code:
                logger.error("history refused exchange %s: %s", exchange.exchange_id, result.error)
        REPLAYED.inc(len(batch))
        return True

    async def _write_one(self, exchange: history_pb2.AppendExchangeRequest) -> bool:
        try:
            await self.history.append_exchange(exchange)
        except ApiError as exc:
            if exc.grpc_code in _PERMANENT:
                logger.error("dropping exchange %s: %s", exchange.exchange_id, exc.message)
                return True
            await self._failed(exc)
            return False
        REPLAYED.inc()
        return True

    async def _failed(self, error: ApiError) -> None:
        if self.failing:
            return
        # Exchanges journaled from now on are counted as they come; those before, all at once (a few may be
        # counted twice, journaled between the two lines: the count is for dashboards, not for accounts).
        self.failing = True
        waiting = await self.pending()
        SPOOLED.inc(waiting)
        logger.warning("history unavailable (%s); %s exchanges wait for it", error.grpc_code.name, waiting)

    async def drain_forever(self, interval_s: float) -> None:
        """The journal's writer: a pass whenever an exchange is journaled or a read waits (`flush`), and every
        `interval_s` (while history fails, only then)."""
        self._looping = True
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    # Another gateway had the turn: what it did not find is looked for again shortly.
                    await within(self._wake.wait(), BATCH_LINGER_S if self._skipped else interval_s)
                if self._upcoming is None:
                    # Woken by an exchange: gather more, unless a read comes to wait for the pass.
                    with contextlib.suppress(TimeoutError):
                        await within(self._hurry.wait(), BATCH_LINGER_S)
                self._hurry.clear()
                self._wake.clear()
                self._since_pass = 0
                done, self._upcoming = self._upcoming, None
                was_failing = self.failing
                try:
                    # A read waiting for this pass waits for the turn too; otherwise another's turn skips it.
                    written = await self.drain_once(wait=done is not None)
                    if self.failing or not written:
                        DEPTH.set(await self.pending())
                    if was_failing and not self.failing:
                        logger.info("history is back; it took %s waiting exchanges", written)
                except Exception:
                    logger.exception("history journal pass failed")
                finally:
                    if done is not None and not done.done():
                        done.set_result(None)
        finally:
            self._looping = False


def _batch(queue: deque[bytes] | list[bytes]) -> list[bytes]:
    """The oldest exchanges that fit one batch (at least one, however large)."""
    batch: list[bytes] = []
    size = 0
    for raw in queue:
        if batch and (len(batch) >= BATCH_EXCHANGES or size + len(raw) > BATCH_BYTES):
            break
        batch.append(raw)
        size += len(raw)
    return batch
