"""Several model server replicas (issue 13): three real simulator processes (tools/vllm-sim) behind the real
adapter process, and behind the whole stack. A replica dies under steady load and comes back; one is made
slow; a multi-turn workload meets the simulated prefix cache. Figures are printed (run with -s to see them);
the assertions are on outcomes, counts and the order of events, never on how long something took.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from genai_common.grpc_client import create_channel
from genai_devstack import databases, infra
from genai_vllmsim.launcher import SimulatorProcess, start_simulator
from tests.harness import ARTIFACTS, RunningStack, launch

pytestmark = pytest.mark.slow

# A replica of ordinary speed: 40 ms to the first token, then 8 tokens 5 ms apart.
FAST = ("--ttft-ms", "40", "--itl-ms", "5", "--output-tokens", "8")
# The adapter's health checks, as shipped: every second, two failures in a row take a replica out.
HEALTH_INTERVAL_S = 1.0
UNHEALTHY_AFTER = 2
# The steady load of the failover test: requests per second, and for how long.
RATE = 50
DURATION_S = 20.0
KILL_AT_S = 4.0
# Per-replica series the adapter must export for Prometheus.
REPLICA_METRICS = (
    "genai_adapter_replica_up",
    "genai_adapter_replica_in_flight",
    "genai_adapter_replica_requests_total",
    "genai_adapter_replica_failovers_total",
    "genai_adapter_replica_breaker_state",
    "genai_adapter_replica_health_checks_total",
    "genai_adapter_replica_waiting",
    "genai_adapter_replica_kv_cache_usage",
)


@contextmanager
def simulators(*flag_sets: tuple[str, ...]) -> Iterator[list[SimulatorProcess]]:
    """One simulator process per set of flags, each on a port of its own below the ephemeral range (so
    that it can be started again on it); all stopped at the end, however the test ends."""
    with ExitStack() as stack:
        sims = []
        for flags in flag_sets:
            sim = start_simulator(*flags, port=infra.free_port())
            stack.callback(sim.close)
            sims.append(sim)
        yield sims


@dataclass
class AdapterProcess:
    """`python -m genai_adapter` as it runs in production (plaintext: dev mode, nobody else calls it)."""

    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def replica_value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextmanager
def adapter_process(urls: list[str], name: str, **settings: str) -> Iterator[AdapterProcess]:
    port, metrics_port = infra.free_port(), infra.free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENAI_")}
    env.update(
        {
            "GENAI_ENV": "dev",
            "GENAI_LOG_LEVEL": "INFO",
            "GENAI_ADAPTER_LISTEN": f"127.0.0.1:{port}",
            "GENAI_ADAPTER_METRICS_PORT": str(metrics_port),
            "GENAI_ADAPTER_UPSTREAM_URLS": ",".join(urls),
            "GENAI_ADAPTER_MODEL": "sim-model",
            **{f"GENAI_ADAPTER_{key.upper()}": value for key, value in settings.items()},
        }
    )
    log_dir = ARTIFACTS / "logs" / "replicas"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "genai_adapter"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while not (infra.port_open("127.0.0.1", port) and infra.port_open("127.0.0.1", metrics_port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the adapter did not start; see {log_dir / (name + '.log')}")
            time.sleep(0.1)
        yield AdapterProcess(proc, port, metrics_port)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def chat(text: str, key: str = "") -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=[inference_pb2.ChatMessage(role="user", content=text)], affinity_key=key
    )


# --- (a) a replica dies under steady load and comes back -------------------------------------------------


@dataclass
class LoadResults:
    unary_ok: int = 0
    unary_failed: list[str] = field(default_factory=list)
    streams_ok: int = 0
    # Streams that ended with an error: (tokens received before it, status code).
    streams_failed: list[tuple[int, str]] = field(default_factory=list)
    sent: int = 0
    elapsed_s: float = 0.0


async def _one(stub: inference_pb2_grpc.InferenceServiceStub, n: int, results: LoadResults) -> None:
    request = chat(f"request {n}: tell me about foxes")
    if n % 2 == 0:
        try:
            await stub.Generate(request, timeout=20)
            results.unary_ok += 1
        except grpc.aio.AioRpcError as exc:
            results.unary_failed.append(f"{exc.code().name}: {exc.details()}")
        return
    tokens = 0
    try:
        async for chunk in stub.GenerateStream(request, timeout=20):
            if chunk.text:
                tokens += 1
        results.streams_ok += 1
    except grpc.aio.AioRpcError as exc:
        results.streams_failed.append((tokens, exc.code().name))


async def steady_load(stub: inference_pb2_grpc.InferenceServiceStub, results: LoadResults) -> None:
    """RATE requests a second for DURATION_S, sent on a fixed schedule whatever the answers' pace (half of
    them streamed); returns once every one has ended."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for n in range(int(RATE * DURATION_S)):
        await asyncio.sleep(max(0.0, start + n / RATE - loop.time()))
        tasks.append(asyncio.create_task(_one(stub, n, results)))
    results.sent = len(tasks)
    await asyncio.gather(*tasks)
    results.elapsed_s = loop.time() - start


@dataclass
class Sample:
    at: float
    up: float
    breaker: float
    failed_checks: float
    ok_checks: float


def sample(adapter: AdapterProcess, url: str, start: float) -> Sample:
    m = adapter.metrics()
    return Sample(
        at=time.monotonic() - start,
        up=replica_value(m, "genai_adapter_replica_up", upstream=url),
        breaker=replica_value(m, "genai_adapter_replica_breaker_state", upstream=url),
        failed_checks=replica_value(
            m, "genai_adapter_replica_health_checks_total", upstream=url, result="failed"
        ),
        ok_checks=replica_value(m, "genai_adapter_replica_health_checks_total", upstream=url, result="ok"),
    )


async def watch_until(
    adapter: AdapterProcess, url: str, start: float, done: Any, timeout_s: float = 30.0
) -> tuple[Sample, list[Sample]]:
    """Read the adapter's /metrics every 50 ms until `done(sample)`; the first such sample and all seen."""
    seen: list[Sample] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = await asyncio.to_thread(sample, adapter, url, start)
        seen.append(now)
        if done(now):
            return now, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened within {timeout_s} s; last: {seen[-1] if seen else None}")


async def test_a_replica_killed_under_steady_load_fails_no_request_and_rejoins() -> None:
    with simulators(FAST, FAST, FAST) as sims:
        urls = [sim.url for sim in sims]
        victim = sims[1]
        with adapter_process(urls, "steady-load", health_interval_s=str(HEALTH_INTERVAL_S)) as adapter:
            channel = create_channel(adapter.target)
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            await stub.Generate(chat("warm up"), timeout=20)
            before = adapter.metrics()
            assert [replica_value(before, "genai_adapter_replica_up", upstream=u) for u in urls] == [1, 1, 1]
            assert replica_value(before, "genai_adapter_concurrency_limit") == 3 * 16
            for metric in REPLICA_METRICS:
                assert any(name == metric for name, _ in before), f"{metric} is not exported"

            results = LoadResults()
            start = time.monotonic()
            load = asyncio.create_task(steady_load(stub, results))
            await asyncio.sleep(KILL_AT_S)

            # Dies as soon as it schedules its next request: that one had no token yet (it must move),
            # the others on it are cut mid-way.
            at_kill = await asyncio.to_thread(sample, adapter, victim.url, start)
            failovers_before = replica_value(
                await asyncio.to_thread(adapter.metrics),
                "genai_adapter_replica_failovers_total",
                upstream=victim.url,
            )
            await asyncio.to_thread(victim.kill, 0)
            await asyncio.to_thread(victim.proc.wait, 10)
            died_at = time.monotonic() - start
            out, seen = await watch_until(adapter, victim.url, start, lambda s: s.up == 0)
            opened = [s for s in seen if s.breaker == 2]
            during = await asyncio.to_thread(adapter.metrics)
            assert replica_value(during, "genai_adapter_concurrency_limit") == 2 * 16

            await asyncio.to_thread(victim.restart)
            restarted_at = time.monotonic() - start
            restarted = await asyncio.to_thread(sample, adapter, victim.url, start)
            back, _seen = await watch_until(adapter, victim.url, start, lambda s: s.up == 1)
            await load
            after = await asyncio.to_thread(adapter.metrics)
            served_after_restart = (await asyncio.to_thread(victim.stats))["finished"]
            await channel.close()

    failovers = (
        replica_value(after, "genai_adapter_replica_failovers_total", upstream=victim.url) - failovers_before
    )
    cut = results.streams_failed
    print(
        f"\nsteady load: {results.sent} requests offered at {RATE}/s for {DURATION_S:.0f} s; "
        f"achieved {results.sent / results.elapsed_s:.1f} req/s "
        f"(all answered within {results.elapsed_s:.1f} s)\n"
        f"  non-streaming: {results.unary_ok} ok, {len(results.unary_failed)} failed\n"
        f"  streams: {results.streams_ok} whole, {len(cut)} cut after their first token "
        f"(tokens before the cut: {sorted(t for t, _ in cut)})\n"
        f"  failovers from the killed replica (moved before their first token): {failovers:.0f}\n"
        f"  killed at {died_at:.2f} s; out of rotation at {out.at:.2f} s (+{out.at - died_at:.2f} s, "
        f"{out.failed_checks - at_kill.failed_checks:.0f} failed health checks"
        + (f"; breaker open at +{opened[0].at - died_at:.2f} s" if opened else "")
        + f")\n  restarted at {restarted_at:.2f} s; back in rotation at {back.at:.2f} s "
        f"(+{back.at - restarted_at:.2f} s, {back.ok_checks - restarted.ok_checks:.0f} health checks); "
        f"it served {served_after_restart} requests after"
    )
    # Zero non-streaming failures; a stream fails only once text had reached its caller, with an error.
    assert results.unary_failed == []
    assert results.unary_ok + results.streams_ok + len(cut) == results.sent
    assert all(tokens >= 1 and code == "UNAVAILABLE" for tokens, code in cut), cut
    # The request that was scheduled when it died had no token: it moved to another replica.
    assert failovers >= 1
    # Out after UNHEALTHY_AFTER failed checks (one more may have run before the sample was read), and
    # back after one answered check (likewise).
    assert out.failed_checks - at_kill.failed_checks <= UNHEALTHY_AFTER + 1
    assert back.ok_checks - restarted.ok_checks <= 2
    # Back in rotation means requests again.
    assert served_after_restart > 0
    assert replica_value(after, "genai_adapter_concurrency_limit") == 3 * 16


# --- (b) a slow replica gets a smaller share ------------------------------------------------------------


async def test_a_slow_replica_receives_a_clearly_smaller_share() -> None:
    slow = ("--ttft-ms", "250", "--itl-ms", "40", "--output-tokens", "8")
    with (
        simulators(FAST, slow, FAST) as sims,
        adapter_process([s.url for s in sims], "slow-replica") as adapter,
    ):
        channel = create_channel(adapter.target)
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def worker(w: int) -> None:
            for n in range(25):
                await stub.Generate(chat(f"worker {w} request {n}"), timeout=30)

        await asyncio.gather(*(worker(w) for w in range(12)))
        await channel.close()
        counts = [(await asyncio.to_thread(sim.stats))["finished"] for sim in sims]
    total = sum(counts)
    print(
        f"\nshares of 300 requests, 12 at a time, without affinity: fast {counts[0]} ({counts[0] / total:.0%}), "
        f"slow {counts[1]} ({counts[1] / total:.0%}), fast {counts[2]} ({counts[2] / total:.0%})"
    )
    assert total == 300
    assert counts[1] < 0.5 * min(counts[0], counts[2])


# --- (c) affinity and the prefix cache ------------------------------------------------------------------

# The prefix cache matters: every 1000 prompt tokens not in a replica's cache cost 400 ms before the first
# token; an answer is 20 tokens.
PREFILL = ("--ttft-ms", "10", "--itl-ms", "2", "--output-tokens", "20", "--prefill-ms-per-1k-tokens", "400")
CONVERSATIONS = 9
TURNS = 6


async def multi_turn(stub: inference_pb2_grpc.InferenceServiceStub, affinity: bool, tag: str) -> list[float]:
    """CONVERSATIONS conversations at once, TURNS turns each with a user's pause between them, every turn
    resending the whole conversation, among other users' one-off questions; the time to first token of
    every turn after the first (the first has nothing cached anywhere).

    The pauses and the other questions matter: in a closed loop without them, the replica that has just
    finished a conversation's turn is the least loaded one at the moment its next turn comes, and least
    loaded routing alone would keep conversations in place by accident."""
    ttfts: list[float] = []
    rng = random.Random(13)
    finished = asyncio.Event()

    async def conversation(c: int) -> None:
        conversation_id = f"{tag}-{c}-{uuid.uuid4().hex}"
        messages: list[inference_pb2.ChatMessage] = []
        for turn in range(TURNS):
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            words = " ".join(f"w{c}x{turn}x{i}" for i in range(120))
            messages.append(inference_pb2.ChatMessage(role="user", content=f"{conversation_id} {words}"))
            request = inference_pb2.GenerateRequest(
                messages=messages, affinity_key=conversation_id if affinity else ""
            )
            started = time.perf_counter()
            first: float | None = None
            answer = []
            async for chunk in stub.GenerateStream(request, timeout=30):
                if chunk.text:
                    first = first or time.perf_counter() - started
                    answer.append(chunk.text)
            assert first is not None
            if turn:
                ttfts.append(first)
            messages.append(inference_pb2.ChatMessage(role="assistant", content="".join(answer)))

    async def one_off_questions() -> None:
        pending = set()
        while not finished.is_set():
            pending.add(
                asyncio.ensure_future(stub.Generate(chat(f"{tag} one-off {uuid.uuid4()}"), timeout=30))
            )
            await asyncio.sleep(rng.uniform(0.02, 0.08))
        await asyncio.gather(*pending)

    others = asyncio.create_task(one_off_questions())
    await asyncio.gather(*(conversation(c) for c in range(CONVERSATIONS)))
    finished.set()
    await others
    return ttfts


async def test_affinity_gives_a_lower_median_time_to_first_token() -> None:
    """The same multi-turn workload three times on the same replicas: with the conversation as affinity key,
    without one (least loaded), and round robin (GENAI_ADAPTER_ROUTING=round_robin, no key)."""
    figures = {}
    with simulators(PREFILL, PREFILL, PREFILL) as sims:
        for mode, routing, affinity in (
            ("affinity", "least_loaded", True),
            ("least loaded", "least_loaded", False),
            ("round robin", "round_robin", False),
        ):
            for sim in sims:
                await asyncio.to_thread(sim.reset)  # counters zeroed, prefix caches emptied
            with adapter_process([s.url for s in sims], f"routing-{routing}", routing=routing) as adapter:
                channel = create_channel(adapter.target)
                try:
                    ttfts = await multi_turn(inference_pb2_grpc.InferenceServiceStub(channel), affinity, mode)
                finally:
                    await channel.close()
            stats = [await asyncio.to_thread(sim.stats) for sim in sims]
            hits = sum(s["prefix_cache_hits"] for s in stats) / max(
                1, sum(s["prefix_cache_queries"] for s in stats)
            )
            figures[mode] = (statistics.median(ttfts), hits, [s["finished"] for s in stats])
    print(
        f"\n{CONVERSATIONS} conversations x {TURNS} turns on 3 replicas with a prefix cache; "
        f"median time to first token of turns 2..{TURNS}:"
    )
    for mode, (median, hits, counts) in figures.items():
        print(
            f"  {mode}: {median * 1000:.0f} ms, prefix-cache hits {hits:.0%} of prompt tokens, "
            f"requests per replica {counts}"
        )
    for baseline in ("least loaded", "round robin"):
        assert figures["affinity"][1] > figures[baseline][1], baseline
        assert figures["affinity"][0] < figures[baseline][0], baseline


# --- the whole stack: the gateway sends the conversation as the key; a replica dies under its load ------


@pytest.fixture(scope="module")
def replicated_stack(
    work_dir: Path, postgres_server: infra.Service, redis_url: str
) -> Iterator[tuple[RunningStack, list[SimulatorProcess]]]:
    """The stack with the adapter in front of three simulator replicas of its own (the stack's own
    simulator stays idle)."""
    database = databases.create_database(postgres_server.url)
    try:
        with simulators(FAST, FAST, FAST) as sims:
            running = launch(
                work_dir,
                database,
                redis_url.rsplit("/", 1)[0] + "/6",
                upstream="sim",
                name="replicas-stack",
                overrides={
                    "GENAI_ADAPTER_UPSTREAM_URLS": ",".join(sim.url for sim in sims),
                    "GENAI_GATEWAY_SIMILAR_ENABLED": "false",
                    "GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE": "-1",
                },
            )
            try:
                yield running, sims
            finally:
                running.stop_all()
    finally:
        databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1].split("?")[0])


def test_through_the_gateway_a_conversation_keeps_its_replica_and_survives_its_death(
    replicated_stack: tuple[RunningStack, list[SimulatorProcess]],
) -> None:
    stack, sims = replicated_stack
    user = stack.new_user()
    for sim in sims:
        sim.reset()
    with stack.client(timeout=30) as client:

        def ask(prompt: str, conversation_id: str | None = None) -> dict[str, Any]:
            body: dict[str, Any] = {"prompt": prompt}
            if conversation_id:
                body["conversation_id"] = conversation_id
            response = client.post("/ask", json=body, headers=user.headers)
            assert response.status_code == 200, response.text
            return dict(response.json())

        conversation = ask(f"first turn {uuid.uuid4()}")["conversation_id"]
        before = [sim.stats()["finished"] for sim in sims]
        for turn in range(4):
            ask(f"turn {turn} {uuid.uuid4()}", conversation)
        grown = [sim.stats()["finished"] - b for sim, b in zip(sims, before, strict=True)]
        # Every later turn on one replica: the conversation's own.
        assert sorted(grown) == [0, 0, 4], grown
        holder = sims[grown.index(4)]

        # Its replica dies while others ask: nobody's request fails, and the conversation goes on elsewhere.
        others = [stack.new_user() for _ in range(3)]
        failures: list[str] = []

        def burst(n: int) -> None:
            who = others[n % len(others)]
            response = client.post("/ask", json={"prompt": f"burst {n} {uuid.uuid4()}"}, headers=who.headers)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")

        with ThreadPoolExecutor(8) as pool:
            sent = [pool.submit(burst, n) for n in range(40)]
            holder.kill()
            sent += [pool.submit(burst, n) for n in range(40, 80)]
            for future in sent:
                future.result()
        answer = ask(f"after the death {uuid.uuid4()}", conversation)
        assert answer["conversation_id"] == conversation
        holder.restart()
    print(
        f"\nthrough the gateway: turns 2-5 of a conversation on one replica {grown}; "
        f"80 questions while that replica died: {len(failures)} failed"
    )
    assert failures == []
    metrics = stack.metrics("adapter")
    assert replica_value(metrics, "genai_adapter_affinity_total", result="kept") >= 4
