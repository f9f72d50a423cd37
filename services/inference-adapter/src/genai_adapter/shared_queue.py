"""One fair queue for every adapter process in front of the same model servers, kept in Redis.

With one adapter, `FairScheduler` decides who goes next. With two (or more) in front of the same replicas,
each would admit its own `max_concurrent` per replica, which doubles the load on vLLM, and each would take
turns among its own callers only: a heavy user on adapter A and a light one on adapter B would not share.
`SharedScheduler` keeps the same rule (a FIFO per user, the users in a ring, a freed slot to the first
user of the ring) in the state Redis, so that it holds across processes:

- `{p}running`: the set of tickets holding a slot; `{p}ring`: the users with requests waiting, in turn
  order; `{p}u:<user>`: that user's waiting tickets, oldest first; `{p}waiting`: how many wait in all.
- Every change is one Lua script (join, leave, admit), so two processes never hand out the same slot:
  the running set never holds more than the capacity the caller passes (GENAI_ADAPTER_MAX_CONCURRENT
  times the replicas in rotation, which every adapter sees alike).
- A ticket is `<adapter id>:<n>`. Each adapter keeps `{p}alive:<id>` alive (a key with a short expiry,
  renewed every second); the admission script drops the running and waiting tickets of an adapter whose
  key has expired, so a crashed adapter's slots come back within `lease_s`.
- An admission is published on `{p}admitted:<id>`, which only that adapter reads; a waiting ticket also
  looks for itself in the running set every second, so a message lost with a reconnection costs a second,
  never a slot.
- The same look finds a waiting ticket that the queue lost: Redis restarted empty, or the adapter's key
  expired while it could not renew it (a stall, Redis away longer than the lease) and another adapter's
  admission dropped its tickets. The tick puts such a ticket back in its user's queue (at the end, with
  its user's turn), instead of leaving it to wait for an admission that never comes until its deadline.

When Redis does not answer (down, full, slow), requests go to this process's own `FairScheduler` with the
whole capacity, for `cooldown_s`, then Redis is tried again: nothing fails because coordination failed,
and while it lasts each adapter admits up to the whole capacity (vLLM queues the excess itself). Requests
already waiting in the shared queue then move to the local one too (their queue timeout starts again
there; the caller's deadline holds): the shared queue could not admit them while it is away. The first
tick that reaches Redis again takes their places out of it.

Keys are built inside the scripts from the prefix: this needs one Redis server, not a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import redis.asyncio as redis
from prometheus_client import Gauge
from redis.exceptions import RedisError

from genai_adapter.scheduler import (
    QUEUE_REJECTED,
    QUEUE_WAIT_SECONDS,
    QUEUE_WAITING,
    RUNNING,
    FairScheduler,
    QueueFull,
    QueueTimeout,
    Ticket,
    wait_deadline,
)
from genai_common.redis_client import create_redis

logger = logging.getLogger(__name__)

PREFIX = "adapter:queue:"
# How long an adapter's tickets outlive its last sign of life.
LEASE_S = 3.0
# How often an adapter renews its key, runs the admission (capacity changes, dead adapters' slots) and
# looks for its waiting tickets in the running set.
TICK_S = 1.0
# After Redis failed, this long on the local queue before trying it again.
COOLDOWN_S = 5.0
# How long closing waits for the loops (a pubsub read that swallowed its cancellation ends within a tick).
CLOSE_WAIT_S = 3.0

SHARED = Gauge(
    "genai_adapter_queue_shared",
    "1 while the fair queue is shared with the other adapters through Redis, 0 while this adapter queues alone",
)

_ADMIT = """
local function owner(t)
  return string.match(t, '^([^:]+):')
end
local function alive(p, t)
  return redis.call('EXISTS', p .. 'alive:' .. owner(t)) == 1
end
-- Out of the running set or out of the user's queue; 1 if it held a slot.
local function drop(p, t, user)
  local held = redis.call('SREM', p .. 'running', t)
  if held == 0 then
    local q = p .. 'u:' .. user
    if redis.call('LREM', q, 1, t) == 1 then
      redis.call('DECR', p .. 'waiting')
      if redis.call('LLEN', q) == 0 then redis.call('LREM', p .. 'ring', 0, user) end
    end
  end
  return held
end
local function enqueue(p, user, t)
  if redis.call('RPUSH', p .. 'u:' .. user, t) == 1 then redis.call('RPUSH', p .. 'ring', user) end
  redis.call('INCR', p .. 'waiting')
end
local function admit(p, cap)
  local running = p .. 'running'
  for _, t in ipairs(redis.call('SMEMBERS', running)) do
    if not alive(p, t) then redis.call('SREM', running, t) end
  end
  local n = redis.call('SCARD', running)
  while n < cap do
    local user = redis.call('LPOP', p .. 'ring')
    if not user then break end
    local q = p .. 'u:' .. user
    local t = redis.call('LPOP', q)
    if redis.call('LLEN', q) > 0 then redis.call('RPUSH', p .. 'ring', user) end
    if t then
      redis.call('DECR', p .. 'waiting')
      if alive(p, t) then
        redis.call('SADD', running, t)
        redis.call('PUBLISH', p .. 'admitted:' .. owner(t), t)
        n = n + 1
      end
    end
  end
end
"""

# ARGV: prefix, capacity, ticket, user, queue_max. {1}: admitted at once; {0}: waiting; {-1, n}: n wait, full.
_JOIN = (
    _ADMIT
    + """
local p, cap, t, user, qmax = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
admit(p, cap)
if redis.call('LLEN', p .. 'ring') == 0 and redis.call('SCARD', p .. 'running') < cap then
  redis.call('SADD', p .. 'running', t)
  return {1}
end
local waiting = tonumber(redis.call('GET', p .. 'waiting') or '0')
if waiting >= qmax then return {-1, waiting} end
enqueue(p, user, t)
return {0}
"""
)

# ARGV: prefix, capacity, ticket, user. Gives back the slot or the place; returns 1 if it held a slot.
_LEAVE = (
    _ADMIT
    + """
local p, cap, t, user = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local held = drop(p, t, user)
admit(p, cap)
return held
"""
)

# ARGV: prefix, capacity, adapter id, lease in ms, the number n of waiting tickets, then n pairs (ticket,
# user) of the tickets waiting in the queue, then the number m of tickets given up, then m such pairs (moved
# to the local queue while Redis did not answer), then every other ticket this adapter still has (joining or
# holding a slot). Renews the adapter's key; puts back the waiting tickets the queue lost; drops the tickets
# given up, and its running tickets that it no longer has (a give-back that failed while Redis was away);
# admits; returns which of the given tickets hold a slot.
_TICK = (
    _ADMIT
    + """
local p, cap, id, lease, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('SET', p .. 'alive:' .. id, '1', 'PX', lease)
local running = p .. 'running'
local live, given = {}, {}
for i = 6, 5 + 2 * n, 2 do
  local t, user = ARGV[i], ARGV[i + 1]
  live[t] = true
  table.insert(given, t)
  if redis.call('SISMEMBER', running, t) == 0 and not redis.call('LPOS', p .. 'u:' .. user, t) then
    enqueue(p, user, t)
  end
end
local m = tonumber(ARGV[6 + 2 * n])
for i = 7 + 2 * n, 6 + 2 * n + 2 * m, 2 do
  drop(p, ARGV[i], ARGV[i + 1])
end
for i = 7 + 2 * n + 2 * m, #ARGV do
  live[ARGV[i]] = true
  table.insert(given, ARGV[i])
end
for _, t in ipairs(redis.call('SMEMBERS', running)) do
  if owner(t) == id and not live[t] then redis.call('SREM', running, t) end
end
admit(p, cap)
local held = {}
for _, t in ipairs(given) do
  if redis.call('SISMEMBER', running, t) == 1 then table.insert(held, t) end
end
return held
"""
)

# ARGV: prefix, ticket, user. The ticket's place if nothing else arrives (1 = next), 0 if not waiting.
_PLACE = """
local p, t, user = ARGV[1], ARGV[2], ARGV[3]
local rank = redis.call('LPOS', p .. 'u:' .. user, t)
if not rank then return 0 end
local place = 1 + rank
local ahead = true
for _, other in ipairs(redis.call('LRANGE', p .. 'ring', 0, -1)) do
  if other == user then
    ahead = false
  else
    local w = redis.call('LLEN', p .. 'u:' .. other)
    place = place + math.min(w, rank)
    if ahead and w > rank then place = place + 1 end
  end
end
return place
"""

_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class SharedScheduler:
    """`FairScheduler`'s interface (slot, resize, retry_after_s, max_concurrent), shared through Redis."""

    def __init__(
        self,
        client: redis.Redis,
        local: FairScheduler,
        *,
        prefix: str = PREFIX,
        lease_s: float = LEASE_S,
        tick_s: float = TICK_S,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self.redis = client
        self.local = local
        self.prefix = prefix
        self.lease_s = lease_s
        self.tick_s = tick_s
        self.cooldown_s = cooldown_s
        self.id = os.urandom(6).hex()
        self._numbers = itertools.count()
        # This process's tickets in the shared queue, joining, waiting or holding a slot: id -> its admission
        # (True: admitted; False: the shared queue is away, queue locally instead).
        self._live: dict[str, asyncio.Future[bool]] = {}
        # Those of them known to wait in the queue (their join returned "waiting"): id -> user.
        self._waiting: dict[str, str] = {}
        # Waiting tickets moved to the local queue when Redis did not answer: id -> user, until a tick has
        # taken their places out of the shared queue (else, when Redis only stalled, they would be admitted
        # there and hold slots nobody uses until the tick after).
        self._abandoned: dict[str, str] = {}
        self._down_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # Set by aclose: the loops end even if a Redis call swallows their cancellation (redis-py's pubsub
        # read can, as its timeout and the task's cancellation meet).
        self._closing = False
        self._join = client.register_script(_JOIN)
        self._leave = client.register_script(_LEAVE)
        self._tick = client.register_script(_TICK)
        self._place = client.register_script(_PLACE)
        SHARED.set(0)

    @property
    def max_concurrent(self) -> int:
        return self.local.max_concurrent

    @property
    def queue_timeout_s(self) -> float:
        return self.local.queue_timeout_s

    def resize(self, max_concurrent: int) -> None:
        """The capacity for every adapter (the same replicas in rotation give the same number), and the
        local queue's for the time Redis is away."""
        self.local.resize(max_concurrent)

    def retry_after_s(self) -> int:
        return self.local.retry_after_s()

    def slot(self, user: str, deadline: float | None = None, *, wait: bool = True) -> SharedTicket:
        return SharedTicket(self, user, deadline, wait)

    async def start(self) -> None:
        """The sign of life and the admission listener; Redis being away now only means queueing alone."""
        try:
            await self.tick()
        except _FAILURES as exc:
            self.failed(exc)
        self._tasks = [asyncio.create_task(self._ticking()), asyncio.create_task(self._listening())]

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            done, left = await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
            for task in done:
                with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
                    task.result()
            if left:
                logger.warning("the shared fair queue's loops did not stop; left behind")
        self._tasks = []
        # Every slot of this adapter back now rather than at the lease's end; its waiting tickets are
        # skipped once its key is gone.
        with contextlib.suppress(*_FAILURES):
            await self._tick(args=[self.prefix, self.max_concurrent, self.id, 1, 0, 0])
            await self.redis.delete(f"{self.prefix}alive:{self.id}")

    # --- shared or alone -----------------------------------------------------------------------------

    @property
    def shared(self) -> bool:
        return asyncio.get_running_loop().time() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        if self.shared:
            logger.warning(
                "the shared fair queue is unreachable (%s); queueing alone for %s s", exc, self.cooldown_s
            )
        self._down_until = asyncio.get_running_loop().time() + self.cooldown_s
        SHARED.set(0)
        # Waiting for an admission the shared queue cannot give while it is away: they queue here instead.
        for ticket, user in list(self._waiting.items()):
            del self._waiting[ticket]
            self._abandoned[ticket] = user
            future = self._live.pop(ticket, None)
            if future is not None and not future.done():
                future.set_result(False)

    async def tick(self) -> None:
        waiting, abandoned = dict(self._waiting), dict(self._abandoned)
        held = await self._tick(
            args=[
                self.prefix,
                self.max_concurrent,
                self.id,
                int(self.lease_s * 1000),
                len(waiting),
                *itertools.chain.from_iterable(waiting.items()),
                len(abandoned),
                *itertools.chain.from_iterable(abandoned.items()),
                *(t for t in self._live if t not in waiting),
            ]
        )
        for ticket in abandoned:
            self._abandoned.pop(ticket, None)
        for ticket in held:
            self.admitted(ticket.decode() if isinstance(ticket, bytes) else str(ticket))
        if self._down_until:
            logger.info("the shared fair queue answers again")
        self._down_until = 0.0
        SHARED.set(1)

    def admitted(self, ticket: str) -> None:
        self._waiting.pop(ticket, None)
        future = self._live.get(ticket)
        if future is not None and not future.done():
            future.set_result(True)

    async def _ticking(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except _FAILURES as exc:
                self.failed(exc)

    async def _listening(self) -> None:
        channel = f"{self.prefix}admitted:{self.id}"
        while not self._closing:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.tick_s)
                    if message is not None:
                        data = message["data"]
                        self.admitted(data.decode() if isinstance(data, bytes) else str(data))
            except _FAILURES:
                # The tick finds what a lost message would have said; listen again shortly.
                await asyncio.sleep(self.tick_s)
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()


class SharedTicket:
    """One request's claim: in the shared queue, or (Redis away) in the local one (`Ticket`'s interface)."""

    def __init__(self, scheduler: SharedScheduler, user: str, deadline: float | None, wait: bool) -> None:
        self.user = user
        self._scheduler = scheduler
        self._caller_deadline = deadline
        self._wait_on_enter = wait
        self._id = ""
        self._state = "new"  # new, waiting, admitted, moved (to the local queue), done
        self._local: Ticket | None = None
        self._admission: asyncio.Future[bool] | None = None
        self._since = 0.0
        self._deadline = math.inf
        self._by_caller = False

    @property
    def admitted(self) -> bool:
        return self._local.admitted if self._local is not None else self._state == "admitted"

    async def __aenter__(self) -> SharedTicket:
        scheduler = self._scheduler
        if scheduler.shared:
            try:
                await self._join()
            except _FAILURES as exc:
                scheduler.failed(exc)
                await self._go_local()
        else:
            await self._go_local()
        if self._wait_on_enter:
            await self.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _join(self) -> None:
        scheduler = self._scheduler
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        self._deadline, self._by_caller = wait_deadline(
            self._since, scheduler.queue_timeout_s, self._caller_deadline
        )
        ticket = f"{scheduler.id}:{next(scheduler._numbers)}"
        # Known before the script runs: the admission may be published before it returns.
        self._admission = scheduler._live[ticket] = loop.create_future()
        try:
            answer = await scheduler._join(
                args=[
                    scheduler.prefix,
                    scheduler.max_concurrent,
                    ticket,
                    self.user,
                    scheduler.local.queue_max,
                ]
            )
        except BaseException:
            del scheduler._live[ticket]
            raise
        self._id = ticket
        if answer[0] == 1:
            self._state = "admitted"
            RUNNING.inc()
            QUEUE_WAIT_SECONDS.observe(0.0)
        elif answer[0] == -1:
            del scheduler._live[ticket]
            self._id, self._state = "", "done"
            QUEUE_REJECTED.labels("queue_full").inc()
            raise QueueFull(int(answer[1]), scheduler.retry_after_s())
        else:
            self._state = "waiting"
            scheduler._waiting[ticket] = self.user
            QUEUE_WAITING.inc()

    async def _go_local(self) -> None:
        self._local = self._scheduler.local.slot(self.user, self._caller_deadline, wait=False)
        await self._local.__aenter__()

    def _take_admission(self) -> bool:
        """Whether the turn has come (then the ticket counts as holding a slot from now). A ticket that the
        shared queue gave up (it went away) is "moved": it goes to the local queue (`_move`)."""
        if self._state == "waiting" and self._admission is not None and self._admission.done():
            QUEUE_WAITING.dec()
            if self._admission.result():
                self._state = "admitted"
                RUNNING.inc()
                QUEUE_WAIT_SECONDS.observe(asyncio.get_running_loop().time() - self._since)
            else:
                self._state = "moved"
        return self._state == "admitted"

    async def _move(self) -> None:
        self._state = "done"
        await self._go_local()

    async def wait(self) -> None:
        """Return once this request holds a slot; QueueTimeout at its deadline (having left the queue)."""
        if self._local is None and not self._take_admission():
            if self._state == "waiting":
                assert self._admission is not None
                loop = asyncio.get_running_loop()
                try:
                    await asyncio.wait((self._admission,), timeout=max(0.0, self._deadline - loop.time()))
                except BaseException:
                    await self._give_back("cancelled")
                    raise
                if self._take_admission():
                    return
                if self._state == "waiting":
                    await self._give_back("deadline" if self._by_caller else "queue_timeout")
                    raise QueueTimeout(self._by_caller, self._scheduler.retry_after_s())
            if self._state != "moved":
                raise RuntimeError(f"a {self._state} ticket cannot wait")
            await self._move()
        if self._local is not None:
            await self._local.wait()

    async def positions(self) -> AsyncIterator[int]:
        """The place in the queue now, then each new one, until the turn comes (as `Ticket.positions`)."""
        if self._local is None:
            async with contextlib.aclosing(self._shared_positions()) as places:
                async for place in places:
                    yield place
            if self._state != "moved":
                return
            await self._move()
        assert self._local is not None
        async with contextlib.aclosing(self._local.positions()) as places:
            async for place in places:
                yield place

    async def _shared_positions(self) -> AsyncIterator[int]:
        scheduler = self._scheduler
        loop = asyncio.get_running_loop()
        shown = 0
        try:
            while not self._take_admission() and self._state == "waiting" and loop.time() < self._deadline:
                assert self._admission is not None
                try:
                    place = int(await scheduler._place(args=[scheduler.prefix, self._id, self.user]))
                except _FAILURES:
                    place = shown  # the place is news, not a promise: keep the last one shown
                if place and place != shown:
                    shown = place
                    yield place
                pause = min(scheduler.local.position_interval_s, self._deadline - loop.time())
                await asyncio.wait((self._admission,), timeout=max(0.0, pause))
        except BaseException:
            await self._give_back("cancelled")
            raise
        if self._state != "moved":
            await self.wait()

    async def aclose(self) -> None:
        """Give back the slot or the place; doing it again does nothing."""
        if self._local is not None:
            self._local.release()
        elif self._state in ("waiting", "admitted"):
            await self._give_back("cancelled")

    async def _give_back(self, reason: str) -> None:
        state, self._state = self._state, "done"
        if state == "admitted":
            RUNNING.dec()
        elif state == "waiting":
            QUEUE_WAITING.dec()
            QUEUE_REJECTED.labels(reason).inc()
        else:
            return
        scheduler = self._scheduler
        scheduler._live.pop(self._id, None)
        scheduler._waiting.pop(self._id, None)
        try:
            # Shielded: a cancelled caller still gives its slot back.
            await asyncio.shield(
                scheduler._leave(args=[scheduler.prefix, scheduler.max_concurrent, self._id, self.user])
            )
        except _FAILURES as exc:
            # This adapter's next tick drops the slot (the ticket is no longer among its own).
            logger.warning("could not give back a shared queue slot: %s", exc)
            scheduler.failed(exc)


def shared_scheduler(url: str, timeout_s: float, local: FairScheduler, **kwargs: Any) -> SharedScheduler:
    """A shared queue in the Redis at `url`, falling back on `local`."""
    return SharedScheduler(create_redis(url, timeout_s=timeout_s), local, **kwargs)
