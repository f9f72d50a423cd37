"""The whole scaled-out topology of issue 13 at once: two gateways and two adapter processes in front of two
model server replicas, with one Redis shared by all (limits, single-flight, the fair queue). The per-user
concurrency cap is exact across the gateways, identical requests on both make one generation between both
replicas, and users take turns in the adapters' shared queue.

Real processes throughout: the stack (with a second adapter process and a second gateway), a redis-server
and a database of this file's own, and two simulator replicas slow enough that requests overlap (the
stack's own simulator stays idle). Figures are printed; counts and the order of events are asserted,
never how long something took.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from genai_devstack import databases, infra
from genai_vllmsim.launcher import SimulatorProcess
from tests.harness import RunningStack, User, launch, wait_for
from tests.test_gateway_replicas import _streamed, _url, _whole
from tests.test_replicas import simulators

pytestmark = pytest.mark.slow

GATEWAYS = ("gateway", "gateway-b")
ADAPTERS = ("adapter", "adapter-2")
# Generations per replica (GENAI_ADAPTER_MAX_CONCURRENT, K); with two replicas four run at once.
PER_REPLICA = 2
CAPACITY = 2 * PER_REPLICA
# The replicas' pace: 100 ms a token, and answers long enough to be held open (vLLM's own batch far
# larger than K, so that every admitted request generates at once and none waits inside the replica).
REPLICA_FLAGS = ("--ttft-ms", "50", "--itl-ms", "100", "--output-tokens", "400", "--max-num-seqs", "64")
# Tokens of the requests the cap test holds open (never waited for: closed once every status is counted).
HELD_TOKENS = 400
# Tokens of the answers waited for: 30 x 100 ms, long enough for 20 requests to arrive meanwhile.
ANSWER_TOKENS = 30
# The heavy user's requests in the turns test: CAPACITY generate, the rest queue behind them. Each
# generates 3 s, so that the light request (a first one on the other gateway: its credentials checked
# with auth) has long joined the queue before the first slot is given back.
HEAVY_REQUESTS = 10
HEAVY_TOKENS = 30


@dataclass
class Topology:
    stack: RunningStack
    replicas: list[SimulatorProcess]


@pytest.fixture(scope="module")
def topology(work_dir: Path, postgres_server: infra.Service) -> Iterator[Topology]:
    redis_server = infra.start_local_redis(work_dir / "topology-redis", infra.free_port())
    database = databases.create_database(postgres_server.url)
    try:
        with simulators(REPLICA_FLAGS, REPLICA_FLAGS) as sims:
            stack = launch(
                work_dir,
                database,
                redis_server.url,
                upstream="sim",
                name="topology-stack",
                replicas={"adapter": 2},
                overrides={
                    "GENAI_ADAPTER_UPSTREAM_URLS": ",".join(f"{sim.base_url}/v1" for sim in sims),
                    "GENAI_ADAPTER_REDIS_URL": redis_server.url,
                    "GENAI_ADAPTER_MAX_CONCURRENT": str(PER_REPLICA),
                    # The cap test's 46 admitted requests beyond the four slots wait in the shared queue
                    # until they are counted and closed.
                    "GENAI_ADAPTER_QUEUE_MAX": "100",
                    "GENAI_ADAPTER_QUEUE_TIMEOUT_S": "60",
                    "GENAI_GATEWAY_SIMILAR_ENABLED": "false",
                    "GENAI_GATEWAY_MAX_TOKENS_LIMIT": "1000",
                },
            )
            try:
                stack.start_extra_gateway("gateway-b")
                yield Topology(stack, sims)
            finally:
                stack.stop_all()
    finally:
        redis_server.stop()
        databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1].split("?")[0])


@asynccontextmanager
async def _gateways(stack: RunningStack) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client of each gateway's plain HTTP, each with room for the cap test's 200 streams at once."""
    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(base_url=_url(stack, GATEWAYS[0]), timeout=60, limits=limits) as a,
        httpx.AsyncClient(base_url=_url(stack, GATEWAYS[1]), timeout=60, limits=limits) as b,
    ):
        yield [a, b]


def _sum(stack: RunningStack, process: str, sample: str) -> float:
    """A metric of one process, summed over its labels."""
    return sum(value for (name, _), value in stack.metrics(process).items() if name == sample)


def _waiting(stack: RunningStack) -> float:
    return sum(_sum(stack, adapter, "genai_adapter_queue_waiting") for adapter in ADAPTERS)


def _handled(stack: RunningStack) -> list[float]:
    """Generations each adapter has sent to a replica so far."""
    return [_sum(stack, adapter, "genai_adapter_replica_requests_total") for adapter in ADAPTERS]


def _started(topology: Topology) -> int:
    return sum(
        int(httpx.get(f"{sim.base_url}/sim/stats", timeout=5).json()["started"]) for sim in topology.replicas
    )


def _settle(topology: Topology) -> None:
    """Until nothing waits or generates anywhere (a previous test's closed streams are cancelled all the
    way down), then the replicas' counts start again from zero."""

    def idle() -> bool:
        adapters_idle = _waiting(topology.stack) == 0 and all(
            _sum(topology.stack, adapter, "genai_adapter_running") == 0 for adapter in ADAPTERS
        )
        replicas_idle = all(
            httpx.get(f"{sim.base_url}/sim/stats", timeout=5).json()["running"] == 0
            for sim in topology.replicas
        )
        return adapters_idle and replicas_idle

    wait_for(idle, timeout_s=30, what="the adapters and replicas are idle")
    for sim in topology.replicas:
        sim.reset()


async def test_the_concurrency_cap_is_exact_across_gateways_and_adapters(topology: Topology) -> None:
    stack = topology.stack
    _settle(topology)
    user = stack.new_user()
    stack.set_limits(user, concurrent_requests=50, requests_per_minute=-1)
    user.token = stack.login(user.username, user.password)  # limits are read when the token is checked
    # Every request streams a 40 s answer and is held open until all 200 have a status, so none ends
    # before every other was admitted or refused: the count does not depend on timing. Of the 50 admitted,
    # four generate and 46 wait in the adapters' shared queue.
    body = {"prompt": f"held {uuid.uuid4().hex}", "max_tokens": HELD_TOKENS}
    counted = asyncio.Event()
    statuses: list[int] = []
    waiting_when_counted = 0.0

    async def hold(client: httpx.AsyncClient, n: int) -> None:
        nonlocal waiting_when_counted
        # Distinct prompts: identical ones would be one flight, not 50 requests reaching the adapters.
        request = {**body, "prompt": f"{body['prompt']} {n}", "stream": True}
        async with client.stream("POST", "/ask", json=request, headers=user.headers) as response:
            statuses.append(response.status_code)
            if len(statuses) == 200:
                # Everything admitted has reached an adapter by now, or soon: look before letting go.
                await asyncio.to_thread(
                    wait_for, lambda: _waiting(stack) >= 50 - CAPACITY, 20, "the admitted requests queue"
                )
                waiting_when_counted = _waiting(stack)
                counted.set()
            if response.status_code == 200:
                await counted.wait()

    async with _gateways(stack) as clients:
        await asyncio.gather(*(hold(clients[n % 2], n) for n in range(200)))
    admitted, refused = statuses.count(200), statuses.count(429)
    print(
        f"\n200 concurrent on 2 gateways (2 adapters, 2 replicas, K={PER_REPLICA}), cap 50: {admitted} "
        f"admitted, {refused} refused; waiting in the shared queue at once: {waiting_when_counted:.0f}"
    )
    assert (admitted, refused) == (50, 150)
    # At most four generate (fewer if a replica's health check failed under load): the rest wait.
    assert waiting_when_counted >= 50 - CAPACITY


async def test_identical_requests_over_both_gateways_make_one_generation(topology: Topology) -> None:
    stack = topology.stack
    _settle(topology)
    users = [stack.new_user() for _ in range(4)]
    body = {"prompt": f"shared {uuid.uuid4().hex}", "max_tokens": ANSWER_TOKENS}
    async with _gateways(stack) as clients:
        results = await asyncio.gather(
            *((_streamed if n % 2 else _whole)(clients[n % 4 // 2], users[n % 4], body) for n in range(20))
        )
    generations = _started(topology)
    print(f"\n20 identical requests on 2 gateways, 2 adapters, 2 replicas: {generations} generation(s)")
    assert [status for status, _ in results] == [200] * 20
    assert len({text for _, text in results}) == 1
    assert len(results[0][1].split()) == ANSWER_TOKENS
    assert generations == 1
    # The adapters went to the two replicas only, never to the stack's own simulator.
    assert stack.sim_stats()["started"] == 0


async def test_a_light_user_goes_before_the_heavy_users_queue(topology: Topology) -> None:
    stack = topology.stack
    _settle(topology)
    heavy, light = stack.new_user(), stack.new_user()
    stack.set_limits(heavy, concurrent_requests=-1, requests_per_minute=-1)
    heavy.token = stack.login(heavy.username, heavy.password)
    handled_before = _handled(stack)
    starts: list[str] = []

    async def ask(client: httpx.AsyncClient, user: User, name: str) -> None:
        body = {"prompt": f"{name} {uuid.uuid4().hex}: tell me about foxes", "max_tokens": HEAVY_TOKENS}
        async with client.stream("POST", "/ask", json={**body, "stream": True}, headers=user.headers) as r:
            assert r.status_code == 200
            first = True
            async for line in r.aiter_lines():
                if first and line.startswith("data: {") and json.loads(line[6:])["type"] == "delta":
                    first = False
                    starts.append(name)

    async with _gateways(stack) as clients:
        heavy_tasks = [
            asyncio.create_task(ask(clients[0], heavy, f"heavy{n}")) for n in range(1, HEAVY_REQUESTS + 1)
        ]
        # The light user's one request, at the other gateway, once the heavy backlog waits in the adapters.
        queued = HEAVY_REQUESTS - CAPACITY
        await asyncio.to_thread(
            wait_for, lambda: _waiting(stack) >= queued, 20, "the heavy user's backlog queues"
        )
        waiting_then = _waiting(stack)
        light_task = asyncio.create_task(ask(clients[1], light, "light"))
        await asyncio.gather(*heavy_tasks, light_task)
    handled = [after - before for after, before in zip(_handled(stack), handled_before, strict=True)]
    heavy_starts = [name for name in starts if name.startswith("heavy")]
    fourth_queued = heavy_starts[CAPACITY + 3]
    print(
        f"\nturns over 2 gateways, 2 adapters, 2 replicas, K={PER_REPLICA}: {waiting_then:.0f} of the heavy "
        f"user's requests waiting when the light one came; order of first tokens: {' '.join(starts)}; "
        f"generations per adapter: {', '.join(f'{n:.0f}' for n in handled)}"
    )
    assert waiting_then >= queued
    assert len(starts) == HEAVY_REQUESTS + 1
    assert starts.index("light") < starts.index(fourth_queued), starts
    assert sum(handled) == HEAVY_REQUESTS + 1
    assert all(n > 0 for n in handled), handled
