"""Single-flight across gateway processes: identical requests make one generation, whichever gateway they
reached, coordinated through the state Redis.

Within a process, `pipeline.Flight` lets identical requests share one generation; this module decides,
per cache key, which process generates and carries what it generates to the others:

- **Lease**: `flight:v1:{<key hash>}` holds the id of the flight generating that answer, set with NX and a
  short expiry (`lease_s`). The process that set it leads, and renews it while it generates.
- **Record**: the leader appends what it streams to `flight:v1:{<key hash>}:<flight id>` (XADD, capped, with
  an expiry): queue positions and pieces as they come, then one last record: the whole answer with its
  usage, or the error, or "abandoned" (it stopped without either: its callers left, it shut down). The
  answer is cached before the last record is written, and the lease given back after it.
- **Followers** in other processes read the record from its start (XREAD BLOCK), so that one arriving late
  still gets every piece, as a local follower does. They count themselves in `<record>:followers`, so that
  a leader whose own callers all left goes on generating while others still follow.

Coordination never costs an answer; when it fails, the follower generates itself:

| what happens                                                   | what a follower does                     |
|----------------------------------------------------------------|------------------------------------------|
| the state Redis is unavailable (its guard) or a command fails  | generates itself, sharing with nobody    |
| the lease is gone without a last record (the leader died)      | takes over: leads, or follows who did    |
| "abandoned"                                                    | takes over                               |
| the leader's error                                             | fails with it, as a local follower would |
| no last record within the generation deadline                  | takes over                               |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter

from genai_common.redis_guard import REDIS_ERRORS, RedisGuard
from genai_common.waiting import within

logger = logging.getLogger(__name__)

PREFIX = "flight:v1:"
# A follower waits this long for a record before it looks whether the leader still holds its lease. The
# client that reads (`reader`) needs a socket timeout longer than this.
FOLLOW_BLOCK_S = 1.0
# Records of one flight: at most one per token and a few more, so far above any answer; a cap all the same.
MAX_RECORDS = 20_000
# A finished flight's record stays this long, for followers that saw its lease just before it was given back.
RECORD_TTL_S = 60
# How long a leader waits to write its last record before it gives up on it (followers then take over).
FINISH_TIMEOUT_S = 2.0

FLIGHTS = Counter(
    "genai_gateway_shared_flights_total",
    "Generations coordinated across gateway processes, by this process's part: led (generated here for "
    "every gateway), followed (relayed another gateway's), took_over (its leader died or stopped), alone "
    "(Redis unavailable: generated here without coordination)",
    ["role"],
)
for _role in ("led", "followed", "took_over", "alone"):
    FLIGHTS.labels(_role)

# KEYS: lease.  ARGV: flight id, lease ms.  Returns {1, id} when this flight leads, else {0, the leader's id}.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1]) or ''}
"""

# One round trip per batch of a leader's records: append them, keep the record, the followers' count and the
# lease alive (or give the lease back with the last record), and say how many other processes follow. Only
# while the lease is still this flight's: a leader that lost it (too slow to renew, another took over) stops
# publishing. The count lives as long as the leader does: a follower reading a steady stream never renews it
# itself, and a count that ran out would make a leader whose own callers left stop for nobody.
# KEYS: lease, record, followers.  ARGV: flight id, lease ms, record ms, max records, release, records...
_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0, 0}
end
for i = 6, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'r', ARGV[i])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, tonumber(redis.call('GET', KEYS[3]) or '0')}
"""


class Unavailable(Exception):
    """The state Redis failed or is skipped: generate without coordination."""


@dataclass
class Record:
    """One thing a leader published: "q" a queue position, "d" a piece, or last: "a" the answer, "e" the
    error, "x" abandoned."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> bool:
        return self.kind in ("a", "e", "x")

    def encode(self) -> str:
        return json.dumps({"k": self.kind, **self.data}, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Record:
        data = json.loads(raw)
        return cls(str(data.pop("k")), data)


@dataclass
class Claim:
    key: str
    flight_id: str
    leads: bool


def _raise_if_cancelled() -> None:
    """redis-py (8.x) can swallow a cancellation that lands while a command is being sent, and the read
    then runs to its end as if nothing happened: a follower whose callers left would keep following."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _record_ms() -> int:
    return int(RECORD_TTL_S * 1000)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class SharedFlights:
    """Created once in the app's lifespan. `client` is the state Redis; `reader` the same server through a
    client whose socket timeout outlasts FOLLOW_BLOCK_S (a blocked read must not look like an outage)."""

    def __init__(
        self,
        client: redis.Redis,
        reader: redis.Redis,
        guard: RedisGuard,
        *,
        lease_s: float = 3.0,
        follow_limit_s: float = 180.0,
    ) -> None:
        self.client = client
        self.reader = reader
        self.guard = guard
        self.lease_ms = int(lease_s * 1000)
        # A follower that waited this long without a last record takes over (a leader renewing its lease
        # but never finishing); the leader's own generation deadline ends it first.
        self.follow_limit_s = follow_limit_s
        self._claim = client.register_script(_CLAIM)
        self._publish = client.register_script(_PUBLISH)
        # Follower counts given back in the background (a follower that leaves must not wait on Redis).
        self._leaving: set[asyncio.Task[Any]] = set()

    @staticmethod
    def _names(key: str, flight_id: str = "") -> tuple[str, str, str]:
        # The hash tag keeps a flight's keys on one Redis Cluster slot (the scripts touch them together).
        lease = f"{PREFIX}{{{key.rsplit(':', 1)[-1]}}}"
        record = f"{lease}:{flight_id}"
        return lease, record, f"{record}:followers"

    async def claim(self, key: str) -> Claim:
        """Lead the generation for `key`, or learn who does. Raises Unavailable."""
        if not self.guard.available:
            raise Unavailable
        flight_id = uuid.uuid4().hex
        try:
            won, holder = await self._claim(keys=[self._names(key)[0]], args=[flight_id, self.lease_ms])
        except REDIS_ERRORS as exc:
            self.guard.failed(exc)
            raise Unavailable from exc
        holder = _text(holder)
        if not int(won) and not holder:
            # The lease expired between SET and GET (inside one script this cannot happen; kept for safety).
            raise Unavailable
        return Claim(key, holder, bool(int(won)))

    def publisher(self, claim: Claim, on_unfollowed: Callable[[], None]) -> Publisher:
        """The leader's side of a claim it won; `on_unfollowed` is called when neither this process nor any
        other follows the flight any more (see `Publisher.idle`)."""
        assert claim.leads
        return Publisher(self, claim, on_unfollowed)

    async def follow(self, claim: Claim) -> AsyncIterator[Record]:
        """The leader's records from the first, ending with its last one. Raises Unavailable when Redis
        fails, LeaderLost when the leader is gone without a last record."""
        lease, record, followers = self._names(claim.key, claim.flight_id)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                await pipe.incr(followers).pexpire(followers, _record_ms()).execute()
        except REDIS_ERRORS as exc:
            self.guard.failed(exc)
            raise Unavailable from exc
        try:
            last_id = "0-0"
            deadline = time.monotonic() + self.follow_limit_s
            block_ms = int(FOLLOW_BLOCK_S * 1000)
            while True:
                _raise_if_cancelled()
                if time.monotonic() > deadline:
                    raise LeaderLost("no answer within the generation deadline")
                try:
                    read = await self.reader.xread({record: last_id}, count=512, block=block_ms)
                    _raise_if_cancelled()
                    holder = None
                    if not read:
                        # Nothing for a while: is the leader still there? It may also have written its last
                        # record and let go between the read and this look: read once more, without waiting.
                        holder = _text(await self.client.get(lease))
                        if holder != claim.flight_id:
                            read = await self.reader.xread({record: last_id}, count=512)
                        else:
                            await self.client.pexpire(followers, _record_ms())
                except REDIS_ERRORS as exc:
                    self.guard.failed(exc)
                    raise Unavailable from exc
                for _, entries in read or ():
                    for entry_id, fields in entries:
                        last_id = _text(entry_id)
                        raw = fields.get(b"r") or fields.get("r")
                        if raw is None:
                            continue
                        item = Record.decode(raw)
                        yield item
                        if item.last:
                            return
                if not read and holder is not None and holder != claim.flight_id:
                    raise LeaderLost("the leader's lease ended without an answer")
        finally:
            task = asyncio.ensure_future(self._leave(followers))
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)

    async def _leave(self, followers: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            # With its expiry again: a count that had run out would come back as -1 and stay for good.
            async with self.client.pipeline(transaction=False) as pipe:
                await pipe.decr(followers).pexpire(followers, _record_ms()).execute()


class LeaderLost(Exception):
    """The leader stopped without a last record: take over."""


class Publisher:
    """A leader's records, written in batches by a task of its own so that the local stream never waits
    on Redis; the same round trips renew the lease. Once Redis fails or the lease is lost it stops: the
    followers see the lease end and take over, while this process's callers keep their generation."""

    def __init__(self, flights: SharedFlights, claim: Claim, on_unfollowed: Callable[[], None]) -> None:
        self.flights = flights
        self.claim = claim
        self.on_unfollowed = on_unfollowed
        self.remote_followers = 0
        self._pending: list[str] = []
        self._last: Record | None = None
        self._local_idle = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    @property
    def stopped(self) -> bool:
        return self._task.done()

    def put(self, record: Record) -> None:
        if not self.stopped and self._last is None:
            self._pending.append(record.encode())
            self._wake.set()

    def idle(self) -> None:
        """This process's callers all left: the generation goes on only while others follow it."""
        self._local_idle = True
        if self.stopped:
            self.on_unfollowed()
        else:
            self._wake.set()

    async def finish(self, record: Record) -> None:
        """Write the last record and give the lease back (bounded: followers take over if this fails)."""
        if self._last is None:
            self._last = record
            self._pending.append(record.encode())
            self._wake.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await within(asyncio.shield(self._task), FINISH_TIMEOUT_S)
        if not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        flights = self.flights
        lease, record, followers = flights._names(self.claim.key, self.claim.flight_id)
        renew_s = flights.lease_ms / 3000
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), renew_s)
            self._wake.clear()
            batch, self._pending = self._pending, []
            release = self._last is not None
            if not flights.guard.available:
                self._stop("the state Redis is unavailable")
                return
            try:
                held, remote = await flights._publish(
                    keys=[lease, record, followers],
                    args=[
                        self.claim.flight_id,
                        flights.lease_ms,
                        _record_ms(),
                        MAX_RECORDS,
                        int(release),
                        *batch,
                    ],
                )
            except REDIS_ERRORS as exc:
                flights.guard.failed(exc)
                self._stop("the state Redis failed")
                return
            if not int(held):
                self._stop("its lease was lost")
                return
            self.remote_followers = int(remote)
            if release:
                return
            if self._local_idle and self.remote_followers <= 0:
                self.on_unfollowed()

    def _stop(self, why: str) -> None:
        logger.warning("no longer sharing a generation with other gateways: %s", why)
        if self._local_idle:
            self.on_unfollowed()
