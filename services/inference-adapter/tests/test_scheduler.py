"""FairScheduler on its own: turn order, the bounded queue, deadlines, and slots that always come back."""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing

import pytest
from prometheus_client import REGISTRY

from genai_adapter.scheduler import FairScheduler, QueueFull, QueueTimeout, Ticket


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def join(scheduler: FairScheduler, user: str, deadline: float | None = None) -> Ticket:
    """A ticket that has taken a free slot or joined the queue, without waiting."""
    return await scheduler.slot(user, deadline, wait=False).__aenter__()


async def settle() -> None:
    """Let every task that can run, run (admissions and cancellations are handled in callbacks)."""
    for _ in range(5):
        await asyncio.sleep(0)


def assert_idle(scheduler: FairScheduler) -> None:
    assert (scheduler.running, scheduler.waiting, scheduler.users_waiting) == (0, 0, 0)


async def test_free_slots_are_taken_at_once() -> None:
    scheduler = FairScheduler(2, 10, 60)
    running_before = metric("genai_adapter_running")
    async with scheduler.slot("a") as first:
        async with scheduler.slot("a") as second:
            assert first.admitted and second.admitted
            assert first.position == 0
            assert scheduler.running == 2
            assert metric("genai_adapter_running") == running_before + 2
        assert scheduler.running == 1
    assert_idle(scheduler)
    assert metric("genai_adapter_running") == running_before


async def test_users_take_turns() -> None:
    scheduler = FairScheduler(1, 100, 60)
    holder = await join(scheduler, "x")
    # A queues five, then B one, then C two: A's backlog must not hold up B or C for more than a turn.
    order: list[str] = []
    tickets: list[Ticket] = []
    for user, count in (("a", 5), ("b", 1), ("c", 2)):
        for n in range(1, count + 1):
            tickets.append(await join(scheduler, user))
            order.append(f"{user}{n}")
    assert (scheduler.waiting, scheduler.users_waiting) == (8, 3)
    expected = ["a1", "b1", "c1", "a2", "c2", "a3", "a4", "a5"]
    # The places shown to waiters predict the order in which the slot is handed out.
    assert [expected.index(name) + 1 for name in order] == [t.position for t in tickets]

    admitted: list[str] = []
    current = holder
    for _ in range(len(tickets)):
        current.release()
        [current] = [t for t in tickets if t.admitted]
        admitted.append(order[tickets.index(current)])
    current.release()
    assert admitted == expected
    assert_idle(scheduler)


async def test_a_newcomer_waits_at_most_one_turn_behind_a_backlog() -> None:
    scheduler = FairScheduler(2, 100, 60)
    tickets = [await join(scheduler, "a") for _ in range(40)]
    late = await join(scheduler, "b")
    assert late.position == 2
    started: list[str] = []
    running = [t for t in tickets if t.admitted]
    assert len(running) == 2
    while running:
        running.pop(0).release()
        for t in [*tickets, late]:
            if t.admitted and t not in running:
                running.append(t)
                started.append("b" if t is late else "a")
    # Two A's were running when B came; one more A went first, then B.
    assert started.index("b") == 1
    assert_idle(scheduler)


@pytest.mark.parametrize("seed", range(20))
async def test_places_match_the_order_of_admission(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    scheduler = FairScheduler(1, 1000, 60)
    holder = await join(scheduler, "holder")
    tickets = []
    for _ in range(rng.randint(1, 60)):
        ticket = await join(scheduler, f"u{rng.randint(1, 6)}")
        tickets.append(ticket)
        # Some leave again, from anywhere in the queue.
        if rng.random() < 0.2:
            rng.choice([t for t in tickets if t.position]).release()
    waiting = [t for t in tickets if t.position]
    # The newest one's place comes from a shortcut (nothing changed since it joined); the others'
    # from numbering the whole queue. Both must match what actually happens.
    places = {id(t): t.position for t in reversed(waiting)}
    assert sorted(places.values()) == list(range(1, len(waiting) + 1))
    current, turn = holder, 0
    while True:
        current.release()
        admitted = [t for t in waiting if t.admitted]
        if not admitted:
            break
        [current] = admitted
        waiting.remove(current)
        turn += 1
        assert places[id(current)] == turn
    assert_idle(scheduler)


async def test_full_queue_refuses_with_a_retry_after() -> None:
    scheduler = FairScheduler(1, 3, 60)
    full_before = metric("genai_adapter_queue_rejected_total", reason="queue_full")
    holder = await join(scheduler, "a")
    waiters = [await join(scheduler, user) for user in ("a", "b", "c")]
    with pytest.raises(QueueFull) as err:
        await join(scheduler, "d")
    assert err.value.waiting == 3
    # Nothing has finished yet: 3 waiting x 5 s assumed per generation / 1 slot.
    assert err.value.retry_after_s == 15
    assert (scheduler.running, scheduler.waiting) == (1, 3)
    assert metric("genai_adapter_queue_rejected_total", reason="queue_full") == full_before + 1
    for ticket in [holder, *waiters]:
        ticket.release()
    assert_idle(scheduler)


async def test_no_queue_at_all() -> None:
    scheduler = FairScheduler(1, 0, 60)
    async with scheduler.slot("a"):
        with pytest.raises(QueueFull):
            async with scheduler.slot("b"):
                pass
    assert_idle(scheduler)


async def test_queue_timeout() -> None:
    scheduler = FairScheduler(1, 10, 0.2)
    before = metric("genai_adapter_queue_rejected_total", reason="queue_timeout")
    loop = asyncio.get_running_loop()
    async with scheduler.slot("a"):
        started = loop.time()
        with pytest.raises(QueueTimeout) as err:
            async with scheduler.slot("b", loop.time() + 10):
                raise AssertionError("never admitted")
        assert err.value.by_caller is False
        assert err.value.retry_after_s >= 1
        assert 0.19 <= loop.time() - started < 1.0
        assert scheduler.waiting == 0
    assert metric("genai_adapter_queue_rejected_total", reason="queue_timeout") == before + 1
    assert_idle(scheduler)


async def test_caller_deadline_sooner_than_queue_timeout() -> None:
    scheduler = FairScheduler(1, 10, 60)
    before = metric("genai_adapter_queue_rejected_total", reason="deadline")
    loop = asyncio.get_running_loop()
    async with scheduler.slot("a"):
        ticket = await join(scheduler, "b", loop.time() + 0.1)
        with pytest.raises(QueueTimeout) as err:
            await ticket.wait()
        assert err.value.by_caller is True
        assert scheduler.waiting == 0
    assert metric("genai_adapter_queue_rejected_total", reason="deadline") == before + 1
    assert_idle(scheduler)


async def test_a_cancelled_waiter_leaves_at_once() -> None:
    scheduler = FairScheduler(1, 10, 60)
    holder = await join(scheduler, "a")
    entered: list[str] = []

    async def request(user: str) -> None:
        async with scheduler.slot(user):
            entered.append(user)
            await asyncio.sleep(3600)

    first = asyncio.create_task(request("b"))
    second = asyncio.create_task(request("c"))
    await settle()
    assert scheduler.waiting == 2
    first.cancel()
    await settle()
    assert (scheduler.waiting, scheduler.users_waiting) == (1, 1)
    holder.release()
    await settle()
    # The slot went past the request that left, which never ran.
    assert entered == ["c"]
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)
    assert_idle(scheduler)


async def test_a_slot_handed_to_a_waiter_that_is_being_cancelled_passes_on() -> None:
    scheduler = FairScheduler(1, 10, 60)
    holder = await join(scheduler, "a")
    entered: list[str] = []

    async def request(user: str) -> None:
        async with scheduler.slot(user):
            entered.append(user)

    doomed = asyncio.create_task(request("b"))
    next_one = asyncio.create_task(request("c"))
    await settle()
    # Both in the same step: the slot is handed to b, and b is cancelled before it can run.
    holder.release()
    doomed.cancel()
    await asyncio.gather(doomed, next_one, return_exceptions=True)
    assert doomed.cancelled()
    assert entered == ["c"]
    assert_idle(scheduler)


async def test_hundred_cancelled_or_timed_out_requests_leave_nothing_behind() -> None:
    scheduler = FairScheduler(2, 1000, 60)
    waiting_before = metric("genai_adapter_queue_waiting")
    running_before = metric("genai_adapter_running")
    loop = asyncio.get_running_loop()
    holders = [await join(scheduler, "h") for _ in range(2)]
    entered = 0

    async def request(n: int) -> None:
        nonlocal entered
        # Even ones time out (the caller's deadline), odd ones are cancelled by their caller.
        deadline = loop.time() + 0.05 + n * 0.001 if n % 2 == 0 else None
        async with scheduler.slot(f"user{n % 7}", deadline):
            entered += 1

    tasks = [asyncio.create_task(request(n)) for n in range(100)]
    await settle()
    assert scheduler.waiting == 100
    for task in tasks[1::2]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, QueueTimeout) for r in results) == 50
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == 50
    assert entered == 0
    assert (scheduler.running, scheduler.waiting) == (2, 0)
    for holder in holders:
        holder.release()
    assert_idle(scheduler)
    assert metric("genai_adapter_queue_waiting") == waiting_before
    assert metric("genai_adapter_running") == running_before

    # Requests cancelled while holding a slot give it back too.
    async def holding(n: int) -> None:
        async with scheduler.slot(f"user{n % 3}"):
            await asyncio.sleep(3600)

    tasks = [asyncio.create_task(holding(n)) for n in range(100)]
    await settle()
    assert (scheduler.running, scheduler.waiting) == (2, 98)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert_idle(scheduler)
    assert metric("genai_adapter_running") == running_before


async def test_positions_count_down_at_most_every_interval() -> None:
    scheduler = FairScheduler(1, 100, 60, position_interval_s=0.2)
    loop = asyncio.get_running_loop()
    holder = await join(scheduler, "a")
    ahead = [await join(scheduler, "a") for _ in range(3)]
    seen: list[tuple[float, int]] = []

    async def follow() -> None:
        async with scheduler.slot("a", wait=False) as ticket:
            async for position in ticket.positions():
                seen.append((loop.time(), position))
            assert ticket.admitted

    follower = asyncio.create_task(follow())
    await settle()
    assert [p for _, p in seen] == [4]
    # Two turns in quick succession are shown as one change, after the interval.
    holder.release()
    ahead[0].release()
    await asyncio.sleep(0.3)
    assert [p for _, p in seen] == [4, 2]
    ahead[1].release()
    await asyncio.sleep(0.3)
    ahead[2].release()
    await follower
    assert [p for _, p in seen] == [4, 2, 1]
    gaps = [b - a for (a, _), (b, _) in zip(seen, seen[1:], strict=False)]
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert_idle(scheduler)


async def test_positions_yield_nothing_when_a_slot_is_free() -> None:
    scheduler = FairScheduler(1, 10, 60)
    async with scheduler.slot("a", wait=False) as ticket:
        assert [p async for p in ticket.positions()] == []
        assert ticket.admitted
    assert_idle(scheduler)


async def test_a_newcomer_moves_a_backlog_back() -> None:
    """Places are a forecast: another user's arrival can push a backlogged user's later requests back."""
    scheduler = FairScheduler(1, 10, 0.5, position_interval_s=0.1)
    holder = await join(scheduler, "a")
    seen: list[int] = []

    async def follow() -> None:
        async with scheduler.slot("a", wait=False) as ticket:
            async for position in ticket.positions():
                seen.append(position)

    first = await join(scheduler, "a")
    follower = asyncio.create_task(follow())
    await settle()
    other = await join(scheduler, "b")
    with pytest.raises(QueueTimeout):
        await follower
    assert seen == [2, 3]
    for ticket in (holder, first, other):
        ticket.release()
    assert_idle(scheduler)


async def test_breaking_out_of_positions_gives_up_the_place() -> None:
    scheduler = FairScheduler(1, 10, 60)
    holder = await join(scheduler, "a")
    async with scheduler.slot("b", wait=False) as ticket:
        async with aclosing(ticket.positions()) as positions:
            async for _ in positions:
                break
        assert scheduler.waiting == 0
    holder.release()
    assert_idle(scheduler)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        FairScheduler(0, 10, 60)


async def test_resize_admits_waiting_requests_at_once_and_lowers_as_generations_finish() -> None:
    # Model server replicas come and go: the cap is max_concurrent x the replicas in rotation.
    scheduler = FairScheduler(2, 100, 60)
    running = [await join(scheduler, "a") for _ in range(2)]
    waiting = [await join(scheduler, user) for user in ("a", "b", "c")]
    scheduler.resize(4)
    assert metric("genai_adapter_concurrency_limit") == 4
    # Two more at once, in the users' turn: a's and b's; c's still waits.
    assert [t.admitted for t in waiting] == [True, True, False]
    assert (scheduler.running, scheduler.waiting) == (4, 1)
    running += waiting[:2]
    scheduler.resize(1)
    # Nothing is stopped; freed slots are not handed on until fewer than one run.
    for ticket in running[:3]:
        ticket.release()
        assert not waiting[2].admitted
    running[3].release()
    assert waiting[2].admitted and scheduler.running == 1
    waiting[2].release()
    assert_idle(scheduler)
    with pytest.raises(ValueError, match="max_concurrent >= 1"):
        scheduler.resize(0)
