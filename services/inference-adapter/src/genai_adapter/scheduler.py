"""Fair sharing of the model server: a cap on generations in flight, and a queue where users take turns.

vLLM runs at most `--max-num-seqs` sequences at once and queues the rest first come, first served,
so one user's burst of 50 requests delays everybody behind it. The adapter therefore admits at most
that many generations itself and keeps the rest in its own queue, where the order is fair across
users (see `FairScheduler`).
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections import OrderedDict
from collections.abc import AsyncIterator
from types import TracebackType

from prometheus_client import Counter, Gauge, Histogram

# A streaming caller hears about a new place in the queue at most this often.
POSITION_INTERVAL_S = 0.5
# Before any generation has finished, assume one holds its slot this long (for retry-after only).
INITIAL_HOLD_S = 5.0
# Weight of the newest generation in the moving average of slot hold times.
HOLD_WEIGHT = 0.1

QUEUE_WAITING = Gauge("genai_adapter_queue_waiting", "Requests waiting for a slot on the model server")
RUNNING = Gauge("genai_adapter_running", "Requests holding a slot on the model server")
QUEUE_WAIT_SECONDS = Histogram(
    "genai_adapter_queue_wait_seconds",
    "Time from a request's arrival to its slot on the model server (0 when a slot was free)",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
QUEUE_REJECTED = Counter(
    "genai_adapter_queue_rejected_total",
    "Requests that never got a slot: queue_full, queue_timeout, deadline (the caller's), cancelled (caller left)",
    ["reason"],
)
for _reason in ("queue_full", "queue_timeout", "deadline", "cancelled"):
    QUEUE_REJECTED.labels(_reason)
# The settings the two gauges above are measured against (GENAI_ADAPTER_MAX_CONCURRENT, _QUEUE_MAX).
CONCURRENCY_LIMIT = Gauge(
    "genai_adapter_concurrency_limit", "Generations allowed on the model server at once"
)
QUEUE_LIMIT = Gauge("genai_adapter_queue_limit", "Requests allowed to wait for a slot")


class QueueFull(Exception):
    """The queue already holds its maximum of waiting requests."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"{waiting} requests are waiting")
        self.waiting = waiting
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """A request waited until its deadline without getting a slot, and has left the queue.

    `by_caller` tells whose deadline it was: the caller's own (sooner than the queue timeout) or the
    queue timeout.
    """

    def __init__(self, by_caller: bool, retry_after_s: int) -> None:
        super().__init__("the caller's deadline passed" if by_caller else "the queue timeout passed")
        self.by_caller = by_caller
        self.retry_after_s = retry_after_s


def wait_deadline(now: float, queue_timeout_s: float, caller_deadline: float | None) -> tuple[float, bool]:
    """Until when a request may wait for a slot, and whether that is the caller's deadline (sooner than the
    queue timeout) rather than the queue's."""
    queue_deadline = now + queue_timeout_s
    if caller_deadline is not None and caller_deadline <= queue_deadline:
        return caller_deadline, True
    return queue_deadline, False


class _State(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    ADMITTED = "admitted"
    DONE = "done"


class FairScheduler:
    """At most `max_concurrent` generations at once; the others wait, and users take turns.

    Fairness rule: every user has a FIFO of their own waiting requests, and the users who have any
    form a ring, in the order they started waiting. When a slot frees, it goes to the oldest request
    of the first user in the ring, and that user, if they have more waiting, moves to the back of
    the ring. With n users waiting, a user's next request is therefore at most n - 1 turns away
    however large the others' backlogs are: a user with 40 queued requests delays another user's
    single request by one turn at most. Turns are per request, not per token, because the cost of a
    generation is unknown when it starts. An empty user id is one user like any other (the
    anonymous one).

    Use one `Ticket` per request::

        async with scheduler.slot(user, deadline) as ticket:   # waits for the turn
            ...call the model server...

    Leaving the block gives the slot back, or the place in the queue, whatever happened (success,
    error, timeout, cancellation). With `wait=False` entering only joins the queue, and the caller
    waits with `await ticket.wait()` or follows its place with `async for position in
    ticket.positions()`.

    A request that arrives while a slot is free and nobody waits takes the slot at once, with no
    future and no queue. A freed slot is handed straight to the next request, so a newcomer can
    never overtake the queue. Every operation is O(1) (OrderedDicts for the ring and each user's
    FIFO, so leaving from the middle is O(1) too); numbering the places for `positions()` is
    O(waiting), done at most once per change of the queue and only when someone asks.
    """

    def __init__(
        self,
        max_concurrent: int,
        queue_max: int,
        queue_timeout_s: float,
        *,
        position_interval_s: float = POSITION_INTERVAL_S,
    ) -> None:
        if max_concurrent < 1 or queue_max < 0 or queue_timeout_s <= 0:
            raise ValueError("need max_concurrent >= 1, queue_max >= 0 and queue_timeout_s > 0")
        self.max_concurrent = max_concurrent
        self.queue_max = queue_max
        CONCURRENCY_LIMIT.set(max_concurrent)
        QUEUE_LIMIT.set(queue_max)
        self.queue_timeout_s = queue_timeout_s
        self.position_interval_s = position_interval_s
        self._running = 0
        self._waiting = 0
        # user -> that user's waiting tickets, oldest first; the order of the users is the ring.
        self._ring: OrderedDict[str, OrderedDict[Ticket, None]] = OrderedDict()
        # Bumped on every change of the queue; places are numbered again only after a change.
        self._version = 0
        self._numbered_version = -1
        # Resolved at the next change of the queue; exists only while someone follows their place.
        self._changed: asyncio.Future[None] | None = None
        self._hold_s = INITIAL_HOLD_S

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests in the queue."""
        return self._waiting

    @property
    def users_waiting(self) -> int:
        return len(self._ring)

    def resize(self, max_concurrent: int) -> None:
        """A new cap (model server replicas came or went): more room admits waiting requests at once,
        less takes effect as the running generations finish (none is stopped)."""
        if max_concurrent < 1:
            raise ValueError("need max_concurrent >= 1")
        self.max_concurrent = max_concurrent
        CONCURRENCY_LIMIT.set(max_concurrent)
        while self._ring and self._running < max_concurrent:
            self._running += 1
            RUNNING.inc()
            self._hand_over()

    def slot(self, user: str, deadline: float | None = None, *, wait: bool = True) -> Ticket:
        """A ticket for one request of `user`; `deadline` is the caller's, in event-loop time."""
        return Ticket(self, user, deadline, wait)

    def retry_after_s(self) -> int:
        """Whole seconds until the current queue has drained, by the recent slot hold times.

        At least 1; at most the queue timeout, beyond which nobody would be waiting anyway.
        """
        drain = self._waiting * self._hold_s / self.max_concurrent
        return max(1, min(math.ceil(drain), math.ceil(self.queue_timeout_s)))

    # --- the ticket's side ------------------------------------------------------------------------

    def _join(self, ticket: Ticket) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        ticket._since = now
        if self._running < self.max_concurrent and not self._waiting:
            self._running += 1
            RUNNING.inc()
            ticket._state = _State.ADMITTED
            ticket._admitted_at = now
            QUEUE_WAIT_SECONDS.observe(0.0)
            return
        if self._waiting >= self.queue_max:
            QUEUE_REJECTED.labels("queue_full").inc()
            raise QueueFull(self._waiting, self.retry_after_s())
        ticket._deadline, ticket._by_caller = wait_deadline(
            now, self.queue_timeout_s, ticket._caller_deadline
        )
        ticket._admission = loop.create_future()
        queue = self._ring.get(ticket.user)
        if queue is None:
            queue = self._ring[ticket.user] = OrderedDict()
        queue[ticket] = None
        self._waiting += 1
        QUEUE_WAITING.inc()
        ticket._state = _State.WAITING
        self._touch()
        ticket._joined_version = self._version

    def _release(self, ticket: Ticket, reason: str = "cancelled") -> None:
        state, ticket._state = ticket._state, _State.DONE
        if state is _State.WAITING:
            queue = self._ring[ticket.user]
            del queue[ticket]
            if not queue:
                del self._ring[ticket.user]
            self._waiting -= 1
            QUEUE_WAITING.dec()
            QUEUE_REJECTED.labels(reason).inc()
            self._touch()
        elif state is _State.ADMITTED:
            held = asyncio.get_running_loop().time() - ticket._admitted_at
            self._hold_s += HOLD_WEIGHT * (held - self._hold_s)
            self._hand_over()

    def _hand_over(self) -> None:
        """Give a freed slot to the next request in turn, or count it free if nobody waits (or the cap
        was lowered below the generations running)."""
        if not self._ring or self._running > self.max_concurrent:
            self._running -= 1
            RUNNING.dec()
            return
        user, queue = next(iter(self._ring.items()))
        ticket, _ = queue.popitem(last=False)
        if queue:
            self._ring.move_to_end(user)
        else:
            del self._ring[user]
        self._waiting -= 1
        QUEUE_WAITING.dec()
        now = asyncio.get_running_loop().time()
        ticket._state = _State.ADMITTED
        ticket._admitted_at = now
        QUEUE_WAIT_SECONDS.observe(now - ticket._since)
        assert ticket._admission is not None
        # Never cancelled: waiters use asyncio.wait, which leaves the future alone.
        ticket._admission.set_result(None)
        self._touch()

    def _touch(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set_result(None)

    def _next_change(self) -> asyncio.Future[None]:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _place_of_newest(self, user: str) -> int:
        """The place of the request that joined last (the last of its user's FIFO), in O(users)."""
        rank = len(self._ring[user]) - 1
        place = 1 + rank
        ahead = True
        for other, queue in self._ring.items():
            if other == user:
                ahead = False
                continue
            # Each full round before this request's own takes one of theirs; in its own round, only
            # the users ahead of it in the ring go first.
            waiting = len(queue)
            place += min(waiting, rank) + (1 if ahead and waiting > rank else 0)
        return place

    def _number_places(self) -> None:
        """Give every waiting ticket its place: the order in which the ring would admit them."""
        place = 0
        fifos = [iter(queue) for queue in self._ring.values()]
        while fifos:
            remaining = []
            for fifo in fifos:
                ticket = next(fifo, None)
                if ticket is not None:
                    place += 1
                    ticket._place = place
                    remaining.append(fifo)
            fifos = remaining
        self._numbered_version = self._version


class Ticket:
    """One request's claim on a slot: waiting in the queue, holding a slot, or done with it."""

    __slots__ = (
        "user",
        "_scheduler",
        "_caller_deadline",
        "_wait_on_enter",
        "_state",
        "_deadline",
        "_by_caller",
        "_admission",
        "_since",
        "_admitted_at",
        "_place",
        "_joined_version",
    )

    def __init__(self, scheduler: FairScheduler, user: str, deadline: float | None, wait: bool) -> None:
        self.user = user
        self._scheduler = scheduler
        self._caller_deadline = deadline
        self._wait_on_enter = wait
        self._state = _State.NEW
        self._deadline = math.inf
        self._by_caller = False
        self._admission: asyncio.Future[None] | None = None
        self._since = 0.0
        self._admitted_at = 0.0
        self._place = 0
        self._joined_version = -1

    @property
    def admitted(self) -> bool:
        return self._state is _State.ADMITTED

    @property
    def position(self) -> int:
        """Place in the queue if nothing else arrives: 1 = next; 0 when not waiting."""
        if self._state is not _State.WAITING:
            return 0
        scheduler = self._scheduler
        if scheduler._numbered_version != scheduler._version:
            if scheduler._version == self._joined_version:
                # Nothing changed since this request joined (the usual first question): no need
                # to number the whole queue.
                return scheduler._place_of_newest(self.user)
            scheduler._number_places()
        return self._place

    async def __aenter__(self) -> Ticket:
        """Take a free slot or join the queue (QueueFull if it is full); wait for the turn unless wait=False."""
        self._scheduler._join(self)
        if self._wait_on_enter:
            await self.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give back the slot or the place in the queue; doing it again does nothing."""
        self._scheduler._release(self)

    async def wait(self) -> None:
        """Return once this request holds a slot; raise QueueTimeout at its deadline.

        On any failure (timeout, cancellation) the ticket has left the queue when this returns.
        """
        if self._state is not _State.WAITING:
            if self._state is _State.ADMITTED:
                return
            raise RuntimeError(f"a {self._state.value} ticket cannot wait")
        assert self._admission is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait((self._admission,), timeout=max(0.0, self._deadline - loop.time()))
        except BaseException:
            self.release()
            raise
        if self._state is not _State.ADMITTED:
            self._expire()

    async def positions(self) -> AsyncIterator[int]:
        """Yield the place in the queue now, then each new place, until this request holds a slot.

        Places are sent at most every `position_interval_s` (changes in between are folded into the
        next one); nothing is yielded when a slot was free at once. Raises QueueTimeout as `wait()`
        does. Leaving the loop early (or the caller going away) gives up the place.
        """
        scheduler = self._scheduler
        interval = scheduler.position_interval_s
        loop = asyncio.get_running_loop()
        if self._state is not _State.WAITING:
            if self._state is _State.ADMITTED:
                return
            raise RuntimeError(f"a {self._state.value} ticket has no place")
        assert self._admission is not None
        admission = self._admission
        try:
            seen = scheduler._version
            shown = self.position
            yield shown
            shown_at = loop.time()
            while self._state is _State.WAITING:
                left = self._deadline - loop.time()
                if left <= 0:
                    break
                if scheduler._version == seen:
                    await asyncio.wait(
                        (admission, scheduler._next_change()),
                        timeout=left,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if self._state is not _State.WAITING:
                        break
                pause = min(shown_at + interval, self._deadline) - loop.time()
                if pause > 0:
                    await asyncio.wait((admission,), timeout=pause)
                    if self._state is not _State.WAITING:
                        break
                seen = scheduler._version
                place = self.position
                if place != shown:
                    shown = place
                    yield shown
                    shown_at = loop.time()
        except BaseException:
            self.release()
            raise
        if self._state is _State.WAITING:
            self._expire()

    def _expire(self) -> None:
        self._scheduler._release(self, "deadline" if self._by_caller else "queue_timeout")
        raise QueueTimeout(self._by_caller, self._scheduler.retry_after_s())
