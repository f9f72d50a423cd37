"""The fair queue shared by several adapter processes, in a real Redis: each `SharedScheduler` here stands for
one adapter (its own id, its own connection), as two processes would."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import pytest
import redis.asyncio as redis

from genai_adapter.scheduler import FairScheduler, QueueFull, QueueTimeout
from genai_adapter.shared_queue import SharedScheduler, SharedTicket
from genai_common.redis_client import create_redis
from genai_devstack import infra
from genai_devstack.infra import free_port

Adapters = Callable[..., Awaitable[SharedScheduler]]


@pytest.fixture
async def adapters(redis_url: str) -> AsyncIterator[Adapters]:
    """Adapters sharing one queue (a prefix of this test's own in the test Redis); all closed at the end."""
    prefix = f"test:{uuid.uuid4().hex}:queue:"
    made: list[SharedScheduler] = []

    async def start(
        capacity: int, *, url: str = redis_url, queue_max: int = 100, **kwargs: float
    ) -> SharedScheduler:
        local = FairScheduler(
            capacity, queue_max, kwargs.pop("queue_timeout_s", 60), position_interval_s=0.05
        )
        scheduler = SharedScheduler(
            create_redis(url, timeout_s=2), local, prefix=prefix, tick_s=0.2, **kwargs
        )
        await scheduler.start()
        made.append(scheduler)
        return scheduler

    yield start
    for scheduler in made:
        await scheduler.aclose()
        await scheduler.redis.aclose()


async def join(scheduler: SharedScheduler, user: str) -> SharedTicket:
    return await scheduler.slot(user, wait=False).__aenter__()


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never: {what}")


async def test_capacity_holds_across_adapters(adapters: Adapters) -> None:
    a, b = await adapters(3), await adapters(3)
    tickets = [await join(s, f"user{n}") for n, s in enumerate((a, b, a, b, a, b))]
    assert [t.admitted for t in tickets] == [True, True, True, False, False, False]
    await tickets[0].aclose()
    # The first waiter in turn, on the other adapter, gets the freed slot; the others keep waiting.
    await until(lambda: tickets[3]._admission is not None and tickets[3]._admission.done(), "b's turn")
    await tickets[3].wait()
    assert [t.admitted for t in tickets[1:]] == [True, True, True, False, False]
    for ticket in tickets:
        await ticket.aclose()


async def test_a_light_user_on_another_adapter_goes_before_a_heavy_users_backlog(adapters: Adapters) -> None:
    # Two per replica, two replicas: four slots. The heavy user fills them from adapter A and queues six
    # more there; the light user's one request arrives at adapter B after all of them.
    a, b = await adapters(4), await adapters(4)
    heavy = [await join(a, "heavy") for _ in range(10)]
    light = await join(b, "light")
    assert [t.admitted for t in heavy] == [True] * 4 + [False] * 6
    started: list[str] = []

    async def run(ticket: SharedTicket, name: str) -> None:
        await ticket.wait()
        started.append(name)

    waiters = [asyncio.create_task(run(t, f"heavy{n}")) for n, t in enumerate(heavy[4:], start=5)]
    waiters.append(asyncio.create_task(run(light, "light")))
    # Generations end one by one, each freeing a slot for the next in turn.
    for ticket in heavy[:4]:
        count = len(started)
        await ticket.aclose()
        await until(lambda count=count: len(started) > count, "a start")
    # The heavy user had been first in the ring, so their fifth went first; then the light user's turn,
    # before the heavy user's sixth (the issue asks: before their fourth queued one).
    assert started[:2] == ["heavy5", "light"], started
    for task in waiters:
        task.cancel()
    for ticket in (*heavy, light):
        await ticket.aclose()


async def test_places_follow_the_turns_across_adapters(adapters: Adapters) -> None:
    a, b = await adapters(1), await adapters(1)
    holder = await join(a, "x")
    queued = [await join(a, "a"), await join(a, "a"), await join(b, "b")]
    async with contextlib.AsyncExitStack() as stack:
        places = [
            await anext(await stack.enter_async_context(aclosing(ticket.positions()))) for ticket in queued
        ]
    # Users take turns: a's first, then b's, then a's second.
    assert places == [1, 3, 2]
    await holder.aclose()
    for ticket in queued:
        await ticket.aclose()


async def test_a_crashed_adapters_slots_come_back_after_its_lease(adapters: Adapters) -> None:
    a = await adapters(2, lease_s=0.6)
    b = await adapters(2, lease_s=0.6)
    held = [await join(a, "u"), await join(a, "u")]
    waiting = await join(b, "v")
    assert all(t.admitted for t in held) and not waiting.admitted
    # A stops renewing its sign of life without giving anything back, as a killed process would.
    for task in a._tasks:
        task.cancel()
    await asyncio.wait_for(waiting.wait(), timeout=10)
    assert waiting.admitted
    await waiting.aclose()


async def test_a_full_shared_queue_refuses_whatever_the_adapter(adapters: Adapters) -> None:
    a, b = await adapters(1, queue_max=2), await adapters(1, queue_max=2)
    tickets = [await join(a, "u"), await join(a, "u"), await join(b, "v")]
    with pytest.raises(QueueFull) as full:
        await join(b, "w")
    assert full.value.waiting == 2
    for ticket in tickets:
        await ticket.aclose()
    # Everything given back: the next request takes a slot at once.
    again = await join(b, "w")
    assert again.admitted
    await again.aclose()


async def test_waiting_past_the_deadline_leaves_the_shared_queue(adapters: Adapters) -> None:
    a, b = await adapters(1, queue_timeout_s=0.3), await adapters(1, queue_timeout_s=0.3)
    holder = await join(a, "u")
    with pytest.raises(QueueTimeout):
        async with b.slot("v"):
            pass
    # Gone from the queue: once the holder is done, a newcomer takes the slot at once.
    await holder.aclose()
    newcomer = await join(b, "w")
    assert newcomer.admitted
    await newcomer.aclose()


async def test_without_redis_each_adapter_queues_alone(adapters: Adapters) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    alone = await adapters(1, url=nowhere, cooldown_s=30)
    assert not alone.shared
    first = await join(alone, "u")
    second = await join(alone, "v")
    assert first.admitted and not second.admitted
    await first.aclose()
    await second.wait()
    assert second.admitted
    await second.aclose()
    assert alone.local.running == 0


async def test_slots_given_back_while_redis_was_away_are_dropped_by_the_next_tick(
    adapters: Adapters, redis_url: str
) -> None:
    a = await adapters(1)
    held = await join(a, "u")
    # Its give-back is lost (as when Redis did not answer then); the ticket is no longer the adapter's.
    a._live.pop(held._id)
    held._state = "done"
    await a.tick()
    newcomer = await join(a, "v")
    assert newcomer.admitted
    await newcomer.aclose()
    client: redis.Redis = create_redis(redis_url)
    try:
        assert await client.scard(f"{a.prefix}running") == 0
    finally:
        await client.aclose()


async def test_a_waiting_request_the_queue_lost_is_put_back_in_it(adapters: Adapters, redis_url: str) -> None:
    """Redis lost the queue (restarted empty, or this adapter's key expired while it stalled and another
    adapter's admission dropped its tickets): the next tick puts the waiting ticket back, and it gets the
    slot when one is free instead of waiting for its deadline."""
    a = await adapters(1, queue_timeout_s=30)
    b = await adapters(1, queue_timeout_s=30)
    holder = await join(a, "u")
    waiting = await join(b, "v")
    assert holder.admitted and not waiting.admitted
    client: redis.Redis = create_redis(redis_url)
    try:
        lost = [key async for key in client.scan_iter(match=f"{a.prefix}*") if b"alive:" not in key]
        await client.delete(*lost)
        await holder.aclose()
        await asyncio.wait_for(waiting.wait(), timeout=10)
        assert waiting.admitted
        await waiting.aclose()
        assert await client.scard(f"{a.prefix}running") == 0
        assert int(await client.get(f"{a.prefix}waiting") or 0) == 0
    finally:
        await client.aclose()


async def test_requests_waiting_in_the_shared_queue_move_to_the_local_one_when_redis_goes(
    adapters: Adapters, tmp_path: Path
) -> None:
    """The shared queue cannot admit anyone while Redis is away: its waiting requests queue locally (in
    their turns) instead of waiting for their deadlines, whether they wait for the turn or watch their place."""
    own = infra.start_local_redis(tmp_path / "redis", infra.free_port())
    try:
        a = await adapters(1, url=own.url, queue_timeout_s=60, cooldown_s=60)
        holder = await join(a, "u")
        waiting = await join(a, "v")
        watching = await join(a, "w")
        assert holder.admitted and not waiting.admitted and not watching.admitted
        places: list[int] = []

        async def watch() -> None:
            async with aclosing(watching.positions()) as updates:
                async for place in updates:
                    places.append(place)

        waiter, watcher = asyncio.create_task(waiting.wait()), asyncio.create_task(watch())
        await until(lambda: bool(places), "the watcher saw its place in the shared queue")
        own.stop()
        await holder.aclose()  # its give-back finds Redis gone
        assert not a.shared
        # One takes the slot the holder freed, in the local queue; the other waits there for its turn.
        await until(lambda: waiting.admitted or watching.admitted, "a waiting request admitted locally")
        first, second, second_task = (
            (waiting, watching, watcher) if waiting.admitted else (watching, waiting, waiter)
        )
        assert not second.admitted and a.local.running == 1
        await first.aclose()
        await asyncio.wait_for(asyncio.gather(waiter, watcher), timeout=10)
        assert second.admitted and second_task.done()
        await second.aclose()
        assert a.local.running == 0
    finally:
        own.stop()


async def test_requests_moved_to_the_local_queue_leave_no_place_behind_in_the_shared_one(
    adapters: Adapters, redis_url: str
) -> None:
    """Redis only stalled (a timeout; its data intact): the requests that moved to the local queue are taken out
    of the shared one by the next tick, instead of being admitted there to slots nobody uses."""
    a = await adapters(1, queue_timeout_s=30)
    holder = await join(a, "u")
    moved = [await join(a, "v"), await join(a, "w")]
    a.failed(TimeoutError("a stalled Redis"))
    await a.tick()
    client: redis.Redis = create_redis(redis_url)
    try:
        assert int(await client.get(f"{a.prefix}waiting") or 0) == 0
        assert await client.llen(f"{a.prefix}u:v") == await client.llen(f"{a.prefix}u:w") == 0
        assert await client.lrange(f"{a.prefix}ring", 0, -1) == []
        assert await client.smembers(f"{a.prefix}running") == {holder._id.encode()}
    finally:
        await client.aclose()
    for ticket in moved:
        await ticket.wait()  # in the local queue, which has the whole capacity while Redis is away
        await ticket.aclose()
    await holder.aclose()
