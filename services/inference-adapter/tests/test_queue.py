"""The adapter's fair queue end to end: in-process adapter, real simulator processes (tools/vllm-sim)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from genai.inference.v1 import inference_pb2
from prometheus_client import REGISTRY

from genai_vllmsim.launcher import SimulatorProcess

# The `adapter_server` fixture: adapter_server(upstream_url, **settings) -> RunningAdapter(stub, scheduler, replicas).
AdapterServer = Callable[..., Awaitable[Any]]

MESSAGES = [inference_pb2.ChatMessage(role="user", content="tell me about foxes")]


def ask(user: str, **fields: Any) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(messages=MESSAGES, user=user, **fields)


async def sim_stats(sim: SimulatorProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(sim.base_url + "/sim/stats")).json()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def drain(call: Any) -> list[inference_pb2.GenerateChunk]:
    return [chunk async for chunk in call]


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("genai_adapter_queue_rejected_total", {"reason": reason}) or 0.0


async def test_one_request_is_not_stuck_behind_another_users_burst(
    adapter_server: AdapterServer, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--itl-ms", "30", "--output-tokens", "10")
    served = await adapter_server(sim.url, model="sim-model", max_concurrent=2)
    stub, scheduler = served.stub, served.scheduler
    loop = asyncio.get_running_loop()

    # User A: 40 at once, half streamed, half not.
    calls: list[Any] = []
    burst: list[asyncio.Future[Any]] = []
    for n in range(40):
        if n % 2:
            call = stub.GenerateStream(ask("user-a"), timeout=30)
            burst.append(asyncio.ensure_future(drain(call)))
        else:
            call = stub.Generate(ask("user-a"), timeout=30)
            burst.append(asyncio.ensure_future(call))
        calls.append(call)

    async def all_queued() -> bool:
        return (scheduler.running, scheduler.waiting) == (2, 38)

    await until(all_queued, "A's 40 requests running or queued")

    # User B, a moment later: one streamed request.
    sent = loop.time()
    b_chunks: list[tuple[float, inference_pb2.GenerateChunk]] = []
    async for chunk in stub.GenerateStream(ask("user-b"), timeout=30):
        b_chunks.append((loop.time() - sent, chunk))

    # The simulator's record of arrivals is the ground truth for the order of starts upstream.
    stats = await sim_stats(sim)
    assert stats["started"] < 20, "last_requests keeps 20: the start of the order must still be there"
    order = [body["user"] for body in stats["last_requests"]]
    b_index = order.index("user-b")
    print(f"\nstart order upstream: {order}; B started {b_index + 1}th, after {b_index} of A's")
    # A's two running, one turn of A's queued requests (A was first in the ring), then B: B is the
    # 4th to start (the 5th if a turn of A's came while B was on its way). A's fourth queued
    # request could only be the 6th.
    assert b_index <= 4
    assert order[:b_index] == ["user-a"] * b_index

    places = [c.queue_position for _, c in b_chunks if not c.text and not c.finish_reason]
    texts = [(t, c) for t, c in b_chunks if c.text]
    # B was queued behind one turn of A's: place 2 (then 1, unless both slots freed at once).
    assert places[0] in (1, 2)
    assert places == sorted(set(places), reverse=True)
    assert all(c.queue_position == 0 for _, c in texts)
    print(f"B: places {places}, first text after {texts[0][0]:.3f} s, done after {b_chunks[-1][0]:.3f} s")
    # B's whole answer took at most about two generations (~0.3 s each), not A's 38 queued ones.
    assert b_chunks[-1][0] < 2.0

    # A's remaining requests, left behind by their caller, leave the queue and free the upstream.
    for call in calls:
        call.cancel()
    await asyncio.gather(*burst, return_exceptions=True)

    async def idle() -> bool:
        stats = await sim_stats(sim)
        return (scheduler.running, scheduler.waiting, stats["running"], stats["waiting"]) == (0, 0, 0, 0)

    await until(idle, "adapter and simulator idle")


async def test_full_queue_is_refused_with_retry_after(
    adapter_server: AdapterServer, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--ttft-ms", "10000")
    served = await adapter_server(sim.url, model="sim-model", max_concurrent=1, queue_max=2)
    stub, scheduler = served.stub, served.scheduler
    held = [stub.Generate(ask(f"user-{n}"), timeout=30) for n in range(3)]
    pending = [asyncio.ensure_future(call) for call in held]

    async def full() -> bool:
        return (scheduler.running, scheduler.waiting) == (1, 2)

    await until(full, "one running, two waiting")
    refused = [stub.Generate(ask("user-x"), timeout=10), stub.GenerateStream(ask("user-x"), timeout=10)]
    for call in refused:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if isinstance(call, grpc.aio.UnaryStreamCall):
                await drain(call)
            else:
                await call
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details() == "the model is busy: 2 requests are waiting; try again shortly"
        trailing = dict(err.value.trailing_metadata() or ())
        assert int(trailing["retry-after"]) >= 1
    # Only the one running request ever reached the model server.
    assert (await sim_stats(sim))["started"] == 1
    for call in held:
        call.cancel()
    await asyncio.gather(*pending, return_exceptions=True)

    async def idle() -> bool:
        return (scheduler.running, scheduler.waiting, (await sim_stats(sim))["running"]) == (0, 0, 0)

    await until(idle, "adapter and simulator idle")


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
async def test_queue_timeout_and_caller_deadline(
    adapter_server: AdapterServer, simulators: Callable[..., SimulatorProcess], streamed: bool
) -> None:
    sim = simulators("--ttft-ms", "10000")
    served = await adapter_server(sim.url, model="sim-model", max_concurrent=1, queue_timeout_s=0.3)
    stub, scheduler = served.stub, served.scheduler
    holder = stub.Generate(ask("user-a"), timeout=30)
    holding = asyncio.ensure_future(holder)

    async def running() -> bool:
        return scheduler.running == 1

    await until(running, "the first request running")

    async def call(deadline_s: float) -> list[inference_pb2.GenerateChunk]:
        if streamed:
            received: list[inference_pb2.GenerateChunk] = []
            async for chunk in stub.GenerateStream(ask("user-b"), timeout=deadline_s):
                received.append(chunk)
            return received
        return [await stub.Generate(ask("user-b"), timeout=deadline_s)]

    # The queue timeout (0.3 s) runs out first: the service is busy, try again later.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(deadline_s=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details() == "waited too long for the model"
    assert int(dict(err.value.trailing_metadata() or ())["retry-after"]) >= 1

    # The caller's own deadline (0.2 s) runs out first: that is the caller's deadline, as anywhere.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(deadline_s=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    assert scheduler.waiting == 0
    assert (await sim_stats(sim))["started"] == 1
    holder.cancel()
    await asyncio.gather(holding, return_exceptions=True)

    async def idle() -> bool:
        return (scheduler.running, (await sim_stats(sim))["running"]) == (0, 0)

    await until(idle, "adapter and simulator idle")


async def test_streamed_places_count_down(
    adapter_server: AdapterServer, simulators: Callable[..., SimulatorProcess]
) -> None:
    # Each generation takes ~0.7 s, longer than the 0.5 s between two place updates.
    sim = simulators("--itl-ms", "35", "--output-tokens", "20")
    served = await adapter_server(sim.url, model="sim-model", max_concurrent=1)
    stub, scheduler = served.stub, served.scheduler
    ahead = [asyncio.ensure_future(stub.Generate(ask("user-a"), timeout=30)) for _ in range(3)]

    async def queued() -> bool:
        return (scheduler.running, scheduler.waiting) == (1, 2)

    await until(queued, "three requests ahead")
    loop = asyncio.get_running_loop()
    sent = loop.time()
    chunks = [(loop.time() - sent, c) async for c in stub.GenerateStream(ask("user-a"), timeout=30)]
    await asyncio.gather(*ahead)

    waiting = [(t, c) for t, c in chunks if c.queue_position]
    assert [c.queue_position for _, c in waiting] == [3, 2, 1]
    # Place chunks carry nothing else, and all come before the answer, whose chunks say 0.
    assert all(not (c.text or c.model or c.finish_reason) for _, c in waiting)
    assert chunks[: len(waiting)] == waiting
    answer = chunks[len(waiting) :]
    assert len([c for _, c in answer if c.text]) == 20
    assert answer[-1][1].finish_reason == "stop"
    print(
        f"\nplaces at {[(round(t, 2), c.queue_position) for t, c in waiting]}, text at {answer[0][0]:.2f} s"
    )
    assert scheduler.running == 0


async def test_hundred_cancelled_or_timed_out_requests_leave_nothing_behind(
    adapter_server: AdapterServer, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--ttft-ms", "10000")
    served = await adapter_server(sim.url, model="sim-model", max_concurrent=2)
    stub, scheduler = served.stub, served.scheduler
    given_up_before = rejected("cancelled") + rejected("deadline")
    holders = [stub.Generate(ask("holder"), timeout=30) for _ in range(2)]
    holding = [asyncio.ensure_future(call) for call in holders]

    async def held() -> bool:
        return scheduler.running == 2

    await until(held, "both slots taken")

    async def cancel_after_first_chunk(n: int) -> None:
        call = stub.GenerateStream(ask(f"user-{n % 5}"), timeout=30)
        async for _ in call:
            call.cancel()
            break

    async def cancel_while_waiting(n: int) -> None:
        call = stub.Generate(ask(f"user-{n % 5}"), timeout=30)
        await asyncio.sleep(0.2)
        call.cancel()

    async def time_out(n: int) -> None:
        call: Any
        if n % 2:
            call = drain(stub.GenerateStream(ask(f"user-{n % 5}"), timeout=0.3))
        else:
            call = stub.Generate(ask(f"user-{n % 5}"), timeout=0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    kinds = (cancel_after_first_chunk, cancel_while_waiting, time_out, time_out)
    await asyncio.gather(*(kinds[n % 4](n) for n in range(100)))

    async def queue_empty() -> bool:
        return scheduler.waiting == 0

    await until(queue_empty, "the queue empty")
    # None of them reached the model server; the two holders still hold their slots.
    assert (await sim_stats(sim))["started"] == 2
    assert scheduler.running == 2
    # Each one the adapter saw is counted once; on a loaded machine a client may give up before its call
    # even reaches the adapter, and then there is nothing to count.
    given_up = rejected("cancelled") + rejected("deadline") - given_up_before
    assert 0 < given_up <= 100

    for call in holders:
        call.cancel()
    await asyncio.gather(*holding, return_exceptions=True)

    async def idle() -> bool:
        stats = await sim_stats(sim)
        return (scheduler.running, scheduler.waiting, stats["running"], stats["waiting"]) == (0, 0, 0, 0)

    await until(idle, "adapter and simulator idle")
