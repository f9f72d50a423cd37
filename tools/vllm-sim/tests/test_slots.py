"""Queueing at --max-num-seqs: one request generates, the others wait in arrival order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx

from genai_vllmsim.launcher import SimulatorProcess

MESSAGES = [{"role": "user", "content": "queue me"}]


async def wait_for(predicate: Callable[[], Awaitable[bool]], attempts: int = 500) -> None:
    for _ in range(attempts):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_requests_beyond_max_num_seqs_wait_in_fifo_order(
    simulators: Callable[..., SimulatorProcess],
) -> None:
    sim = simulators("--max-num-seqs", "1", "--itl-ms", "40", "--output-tokens", "6")
    timeline: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()

    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:

        async def stats() -> dict[str, int]:
            return (await client.get("/sim/stats")).json()

        async def run(name: str) -> None:
            request = {"messages": MESSAGES, "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=request) as resp:
                async for line in resp.aiter_lines():
                    if '"content":"' in line and '"role"' not in line:
                        timeline.setdefault(name, []).append(loop.time())

        first = asyncio.create_task(run("first"))
        await wait_for(lambda: _is(stats, running=1, waiting=0))
        second = asyncio.create_task(run("second"))
        await wait_for(lambda: _is(stats, running=1, waiting=1))
        third = asyncio.create_task(run("third"))
        await wait_for(lambda: _is(stats, running=1, waiting=2))

        metrics = (await client.get("/metrics")).text
        assert 'vllm:num_requests_running{model_name="sim-model"} 1.0' in metrics
        assert 'vllm:num_requests_waiting{model_name="sim-model"} 2.0' in metrics

        await asyncio.gather(first, second, third)
        final = await stats()

    assert all(len(timeline[n]) == 6 for n in ("first", "second", "third"))
    # Each starts generating only after the one before it has finished.
    assert timeline["second"][0] >= timeline["first"][-1]
    assert timeline["third"][0] >= timeline["second"][-1]
    assert (final["running"], final["waiting"], final["finished"]) == (0, 0, 3)


async def _is(stats: Callable[[], Awaitable[dict[str, int]]], **expected: int) -> bool:
    current = await stats()
    return all(current[k] == v for k, v in expected.items())


async def test_cancelled_while_queued_frees_its_place(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--max-num-seqs", "1", "--itl-ms", "40", "--output-tokens", "6")
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as client:

        async def stats() -> dict[str, int]:
            return (await client.get("/sim/stats")).json()

        request = {"messages": MESSAGES}
        busy = asyncio.create_task(client.post("/v1/chat/completions", json=request))
        await wait_for(lambda: _is(stats, running=1))
        queued = asyncio.create_task(client.post("/v1/chat/completions", json=request))
        await wait_for(lambda: _is(stats, waiting=1))
        queued.cancel()
        await wait_for(lambda: _is(stats, waiting=0, cancelled=1))
        assert (await busy).status_code == 200
        await wait_for(lambda: _is(stats, running=0, finished=1))
