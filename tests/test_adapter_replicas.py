"""Two adapter processes in front of the same two model server replicas share one fair queue (issue 13):
GENAI_ADAPTER_MAX_CONCURRENT per replica holds for both together, and users take turns across them. Real
simulator processes, real adapter processes and the test Redis; the order of events is asserted, never
how long something took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import redis
from genai.inference.v1 import inference_pb2_grpc

from genai_common.grpc_client import create_channel
from tests.test_replicas import AdapterProcess, adapter_process, chat, replica_value, simulators

pytestmark = pytest.mark.slow

# Generations per replica (vLLM's --max-num-seqs as the adapter is told it), and the replicas.
PER_REPLICA = 2
# Slow enough that the heavy user's backlog is still queued when the light user arrives.
SLOW = ("--ttft-ms", "400", "--itl-ms", "20", "--output-tokens", "30", "--max-num-seqs", "64")
HEAVY_REQUESTS = 10
# Between two of the heavy user's requests.
STAGGER_S = 0.03
# A database of the test Redis for this file alone: the queue's keys start empty.
QUEUE_DB = 7


@contextmanager
def watching_replicas(urls: list[str]) -> Iterator[list[int]]:
    """The largest number of generations seen running on all replicas together, sampled until the end."""
    import httpx

    seen = [0]
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                running = sum(
                    client.get(f"{url.removesuffix('/v1')}/sim/stats").json()["running"] for url in urls
                )
                seen[0] = max(seen[0], running)
                time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


@dataclass
class SharedPair:
    a: AdapterProcess
    b: AdapterProcess
    urls: list[str]
    # The most generations seen running on both replicas together.
    most_running: list[int]
    queue_url: str


@contextmanager
def shared_pair(redis_url: str, name: str) -> Iterator[SharedPair]:
    """Two simulator replicas and two adapter processes sharing the fair queue in an emptied Redis database."""
    queue_url = redis_url.rsplit("/", 1)[0] + f"/{QUEUE_DB}"
    redis.Redis.from_url(queue_url).flushdb()
    settings = {"redis_url": queue_url, "max_concurrent": str(PER_REPLICA)}
    with simulators(SLOW, SLOW) as sims:
        urls = [sim.base_url + "/v1" for sim in sims]
        with (
            adapter_process(urls, f"{name}-a", **settings) as a,
            adapter_process(urls, f"{name}-b", **settings) as b,
            watching_replicas(urls) as most_running,
        ):
            yield SharedPair(a, b, urls, most_running, queue_url)


def waiting(adapter: AdapterProcess) -> float:
    return replica_value(adapter.metrics(), "genai_adapter_queue_waiting")


async def _stream(
    stub: inference_pb2_grpc.InferenceServiceStub, user: str, name: str, starts: list[str]
) -> None:
    request = chat(f"{name}: tell me about foxes")
    request.user = user
    first = True
    async for chunk in stub.GenerateStream(request, timeout=60):
        if chunk.text and first:
            first = False
            starts.append(name)


def test_two_adapters_share_the_cap_and_the_turns(redis_url: str) -> None:
    with shared_pair(redis_url, "shared") as pair:
        a, b, urls, most_running, queue_url = pair.a, pair.b, pair.urls, pair.most_running, pair.queue_url

        async def scenario() -> list[str]:
            starts: list[str] = []
            channel_a, channel_b = create_channel(a.target), create_channel(b.target)
            try:
                stub_a = inference_pb2_grpc.InferenceServiceStub(channel_a)
                stub_b = inference_pb2_grpc.InferenceServiceStub(channel_b)
                # A moment apart, so that slots free (and the next requests start) a moment apart too: the
                # order of first tokens is then the order of admission, even on a loaded machine.
                heavy = []
                for n in range(1, HEAVY_REQUESTS + 1):
                    heavy.append(asyncio.create_task(_stream(stub_a, "heavy", f"heavy{n}", starts)))
                    await asyncio.sleep(STAGGER_S)
                # The light user's one request, at the other adapter, once the heavy backlog is queued.
                queued = HEAVY_REQUESTS - 2 * PER_REPLICA
                for _ in range(400):
                    if waiting(a) >= queued:
                        break
                    await asyncio.sleep(0.025)
                assert waiting(a) == queued, "the heavy user's backlog never queued"
                light = asyncio.create_task(_stream(stub_b, "light", "light", starts))
                await asyncio.gather(*heavy, light)
            finally:
                await channel_a.close()
                await channel_b.close()
            return starts

        starts = asyncio.run(scenario())
    heavy_starts = [name for name in starts if name.startswith("heavy")]
    capacity = PER_REPLICA * len(urls)
    # The 4th of the heavy user's queued requests (those that started after the first `capacity`).
    fourth_queued = heavy_starts[capacity + 3]
    print(
        f"\nshared fair queue, 2 adapters x 2 replicas, {PER_REPLICA} per replica: most generations running at "
        f"once {most_running[0]} (cap {capacity}); order of first tokens: {' '.join(starts)}"
    )
    assert len(starts) == HEAVY_REQUESTS + 1
    assert most_running[0] <= capacity
    assert starts.index("light") < starts.index(fourth_queued), starts
    # Users take turns: one of the heavy user's queued requests at most goes before the light one.
    assert starts.index("light") <= capacity + 1, starts
    # Nothing left in the shared queue.
    client = redis.Redis.from_url(queue_url)
    assert client.scard("adapter:queue:running") == 0
    assert int(client.get("adapter:queue:waiting") or 0) == 0


def test_the_cap_holds_for_both_adapters_together(redis_url: str) -> None:
    """Twelve requests spread over two adapters against a cap of four: never more than four generating."""
    with shared_pair(redis_url, "cap") as pair:
        a, b, most_running = pair.a, pair.b, pair.most_running

        async def burst() -> int:
            channels = [create_channel(a.target), create_channel(b.target)]
            try:
                stubs = [inference_pb2_grpc.InferenceServiceStub(channel) for channel in channels]
                starts: list[str] = []
                await asyncio.gather(
                    *(_stream(stubs[n % 2], f"user{n % 3}", f"r{n}", starts) for n in range(12))
                )
                return len(starts)
            finally:
                for channel in channels:
                    await channel.close()

        answered = asyncio.run(burst())
        shared = [replica_value(x.metrics(), "genai_adapter_queue_shared") for x in (a, b)]
    print(f"\n12 requests over 2 adapters, cap {PER_REPLICA * 2}: most running at once {most_running[0]}")
    assert answered == 12
    assert shared == [1.0, 1.0]
    assert 0 < most_running[0] <= PER_REPLICA * 2


def test_without_redis_each_adapter_still_answers(redis_url: str) -> None:
    from genai_devstack.infra import free_port

    settings = {"redis_url": f"redis://127.0.0.1:{free_port()}/0", "max_concurrent": str(PER_REPLICA)}
    with simulators(SLOW) as sims:
        urls = [sims[0].base_url + "/v1"]
        with adapter_process(urls, "alone", **settings) as alone:

            async def ask() -> int:
                channel = create_channel(alone.target)
                try:
                    stub = inference_pb2_grpc.InferenceServiceStub(channel)
                    starts: list[str] = []
                    await asyncio.gather(*(_stream(stub, "u", f"r{n}", starts) for n in range(4)))
                    return len(starts)
                finally:
                    await channel.close()

            assert asyncio.run(ask()) == 4
            assert replica_value(alone.metrics(), "genai_adapter_queue_shared") == 0.0
