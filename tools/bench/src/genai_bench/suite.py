"""The measurements of one bench run, phase by phase, on a started rig.

Every loop is bounded in time and in request count; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from genai.history.v1 import history_pb2, history_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_bench import profiling
from genai_bench.load import MODEL, Clients, Outcome, StreamTiming, Target, chat, chat_stream, closed_loop
from genai_bench.procs import ProcessSet, cpu_delta, rss_bytes
from genai_bench.rig import LITELLM_MATCHED, Rig, repo_root
from genai_bench.stats import Step, Summary, gaps, summarize, sustained
from genai_common import mtls
from genai_common.grpc_client import create_channel

MAX_TOKENS = 16
SEQ = "seq"
# A streamed chunk that carries text (not the empty role chunk) in a chat or completion stream.
_TEXT = re.compile(rb'"(?:content|text)":"[^"]')


def level_name(concurrency: int) -> str:
    return f"c{concurrency}"


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase runs. The full plan takes about 6-8 minutes on 2 cores."""

    levels: tuple[int, ...] = (1, 16, 64)
    run_s: float = 4.0
    # Requests of the sequential run that opens a new connection (and TLS session) for each.
    seq_requests: int = 60
    max_requests: int = 100_000
    layer_levels: tuple[int, ...] = (1, 64)
    peel_rounds: int = 4
    ramp: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    ramp_step_s: float = 3.0
    max_p99_s: float = 1.0
    stream_ttft_ms: int = 0
    stream_itl_ms: int = 20
    stream_tokens: int = 32
    stream_levels: tuple[tuple[int, int], ...] = ((1, 12), (16, 64))  # (concurrency, streams)
    memory_streams: int = 1000
    # Slow enough that every stream stays open while the rest are being opened and memory is read.
    memory_itl_ms: int = 1000
    memory_tokens: int = 180
    profile_s: int = 12
    profile_concurrency: int = 64
    quick: bool = False


QUICK = Plan(
    levels=(1, 16, 64),
    run_s=1.0,
    seq_requests=10,
    layer_levels=(1, 64),
    peel_rounds=2,
    ramp=(8, 32, 128),
    ramp_step_s=1.0,
    stream_levels=((1, 4), (16, 16)),
    memory_streams=200,
    memory_tokens=60,
    profile_s=0,
    quick=True,
)


@dataclass
class StreamResult:
    ttfc: Summary
    gaps: Summary
    streams: int
    errors: int


@dataclass
class MemoryResult:
    target: str
    wanted: int
    opened: int
    idle: dict[str, int]
    loaded: dict[str, int]
    seconds_to_open: float
    # Generations the simulator still ran 2 s after the clients had gone (not cancelled upstream).
    left_running: int = 0
    loaded_pss: dict[str, int] = field(default_factory=dict)


@dataclass
class Results:
    plan: Plan
    latency: dict[tuple[str, str], Summary] = field(default_factory=dict)
    client_cpu_ms: dict[tuple[str, str], float] = field(default_factory=dict)
    error_kinds: dict[tuple[str, str], str] = field(default_factory=dict)
    cache_hit: dict[str, Summary] = field(default_factory=dict)
    # (target, level) -> cache hits of another path with a cache (LiteLLM's feature-matched configuration).
    cache_hit_other: dict[tuple[str, str], Summary] = field(default_factory=dict)
    layers: dict[tuple[str, str], Summary] = field(default_factory=dict)
    redis_calls_per_request: float = math.nan
    # Per request through the whole path: commands sent to Redis, and commands run inside its Lua scripts.
    redis_round_trips: dict[str, float] = field(default_factory=dict)
    redis_scripted: dict[str, float] = field(default_factory=dict)
    postgres_xacts_per_request: float = math.nan
    # Authenticate calls the gateway makes per request (the rest are answered from its credential cache).
    auth_calls_per_request: float = math.nan
    # (target, level) -> component -> CPU milliseconds per request, at c1 and at the highest level.
    cpu_ms: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    # The layers of the path at c1, measured in alternation (so that background load hits all alike).
    peel: dict[str, Summary] = field(default_factory=dict)
    ramps: dict[str, list[Step]] = field(default_factory=dict)
    streams: dict[tuple[str, str], StreamResult] = field(default_factory=dict)
    memory: list[MemoryResult] = field(default_factory=list)
    profiles: list[profiling.Profile] = field(default_factory=list)
    profile_note: str = ""
    problems: list[str] = field(default_factory=list)
    warmup_errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def ceiling(self) -> tuple[float, str]:
        """The load generator's best rate against the simulator directly, and where it was reached."""
        best, where = math.nan, ""
        for (target, level), summary in self.latency.items():
            if target == "direct" and level != SEQ and (math.isnan(best) or summary.rps > best):
                best, where = summary.rps, level
        return best, where


# PGSTAT_IDLE_INTERVAL (10 s) and a margin.
PG_STATS_IDLE_FLUSH_S = 11.0
PEEL_DIRECT = "simulator direct (HTTP)"
PEEL_ADAPTER = "adapter gRPC Generate"
PEEL_GATEWAY = "gateway HTTP (no nginx)"
PEEL_OURS = "nginx TLS -> gateway (whole path)"
PEEL_AUTH = "auth gRPC Authenticate"
PEEL_HISTORY = "history gRPC AppendExchange"
PEEL_REDIS = "Redis round trip (PING)"


async def _alternate(
    jobs: dict[str, Callable[[int, int], Awaitable[Any]]], rounds: int, total_s: float
) -> dict[str, Outcome]:
    """Each job at concurrency 1 for `total_s` in all, in `rounds` turns, so that drift spreads evenly."""
    pooled = {name: Outcome() for name in jobs}
    for job in jobs.values():
        await closed_loop(job, 1, 30, 2)
    for _ in range(rounds):
        for name, job in jobs.items():
            outcome = await closed_loop(job, 1, total_s / rounds, 100_000)
            into = pooled[name]
            into.latencies += outcome.latencies
            into.errors += outcome.errors
            into.error_kinds.update(outcome.error_kinds)
            into.elapsed_s += outcome.elapsed_s
            into.client_cpu_s += outcome.client_cpu_s
    return pooled


# Failures of the requests that open connections before a run's clock starts (reported, not counted).
WARMUP_ERRORS: list[str] = []


def _prompt(tag: str, i: int) -> str:
    # Distinct for every request, so that nothing along the path can answer from a cache.
    return f"Benchmark {tag} request {i}: tell me something about the sea."


async def _http_run(
    target: Target,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    *,
    keepalive: bool = True,
    same_prompt: str | None = None,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[], None] | None = None,
) -> Outcome:
    tag = uuid.uuid4().hex[:8]
    async with Clients(target, concurrency, keepalive) as clients:
        warmup = Outcome()
        if keepalive:
            # Connections (and TLS sessions) are opened before the clock starts.
            warmup = await closed_loop(
                lambda i, w: chat(clients[w], target, same_prompt or _prompt(tag + "w", i), MAX_TOKENS),
                concurrency,
                30,
                concurrency * 2,
            )
        if on_start:
            on_start()
        outcome = await closed_loop(
            lambda i, w: chat(clients[w], target, same_prompt or _prompt(tag, i), MAX_TOKENS),
            concurrency,
            duration_s,
            max_requests,
        )
        if on_end:
            on_end()
        if warmup.errors:
            # Not in the figures, but worth knowing: these come after the path sat idle for a while.
            WARMUP_ERRORS.append(f"{target.name} c{concurrency}: {warmup.describe_errors()}")
        return outcome


def _shown(path: Path) -> str:
    """A path as the report shows it: from the repository's root, not this machine's folders."""
    try:
        return str(path.resolve().relative_to(repo_root()))
    except ValueError:
        return path.name


class Bench:
    def __init__(self, rig: Rig, plan: Plan, log: Callable[[str], None] = print) -> None:
        self.rig = rig
        self.plan = plan
        self.log = log
        self.results = Results(plan)
        self.targets = [rig.direct(), rig.ours(), *rig.litellm_targets()]

    async def run(self) -> Results:
        phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("latency", self.latency),
            ("cache hit", self.cache_hit),
            ("hops", self.hops),
            ("ramp", self.ramp),
            ("profile", self.profile),
            ("streaming", self.streaming),
            ("memory", self.memory),
        ]
        for name, phase in phases:
            started = time.monotonic()
            self.log(f"-- {name}")
            try:
                await phase()
            except Exception as exc:  # one broken phase must not lose the others' figures
                self.results.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                self.log(f"   {name} failed: {type(exc).__name__}: {exc}")
            self.results.timings[name] = time.monotonic() - started
        self.results.warmup_errors = list(WARMUP_ERRORS)
        return self.results

    def _note(self, target: str, level: str, outcome: Outcome) -> Summary:
        summary = outcome.summary()
        self.results.latency[(target, level)] = summary
        done = summary.count + summary.errors
        self.results.client_cpu_ms[(target, level)] = outcome.client_cpu_s * 1000 / done if done else math.nan
        if outcome.errors:
            self.results.error_kinds[(target, level)] = outcome.describe_errors()
        self.log(
            f"   {target:8} {level:4} p50 {summary.p50 * 1000:7.2f} ms  p99 {summary.p99 * 1000:7.2f} ms  "
            f"{summary.rps:7.0f} req/s  errors {summary.errors}"
        )
        return summary

    # --- phases ----------------------------------------------------------------------------------------

    async def latency(self) -> None:
        """Cache misses, every target at every level, targets interleaved so that drift hits all alike."""
        plan = self.plan
        for target in self.targets:
            outcome = await _http_run(target, 1, 120, plan.seq_requests, keepalive=False)
            self._note(target.name, SEQ, outcome)
        top = max(plan.levels)
        processes = ProcessSet({**self.rig.process_roots()})
        for concurrency in plan.levels:
            for target in self.targets:
                before: dict[str, float] = {}
                after: dict[str, float] = {}
                measure_cpu = concurrency in (1, top)
                outcome = await _http_run(
                    target,
                    concurrency,
                    plan.run_s,
                    plan.max_requests,
                    on_start=(lambda b=before: b.update(processes.cpu())) if measure_cpu else None,
                    on_end=(lambda a=after: a.update(processes.cpu())) if measure_cpu else None,
                )
                summary = self._note(target.name, level_name(concurrency), outcome)
                if measure_cpu and summary.count:
                    used = cpu_delta(before, after)
                    per = {name: seconds * 1000 / summary.count for name, seconds in used.items()}
                    per["load generator"] = outcome.client_cpu_s * 1000 / summary.count
                    self.results.cpu_ms[(target.name, level_name(concurrency))] = per

    async def cache_hit(self) -> None:
        """The same prompt repeated: ours answers from its Redis cache, and so does LiteLLM's feature-matched
        configuration (the baseline has no cache)."""
        targets = [self.rig.ours(cache=True)]
        targets += [t for t in self.rig.litellm_targets() if t.name == LITELLM_MATCHED]
        for target in targets:
            prompt = f"Benchmark cache hit {uuid.uuid4().hex[:8]}: the same question every time."
            for concurrency in self.plan.levels:
                outcome = await _http_run(
                    target, concurrency, self.plan.run_s, self.plan.max_requests, same_prompt=prompt
                )
                summary = outcome.summary()
                if target.name == "ours":
                    self.results.cache_hit[level_name(concurrency)] = summary
                else:
                    self.results.cache_hit_other[(target.name, level_name(concurrency))] = summary
                self.log(
                    f"   cache {target.name:10} c{concurrency:<3} p50 {summary.p50 * 1000:7.2f} ms  "
                    f"p99 {summary.p99 * 1000:7.2f} ms  {summary.rps:7.0f} req/s  errors {summary.errors}"
                )

    async def hops(self) -> None:
        """Each hop on its own, so that the whole path's cost can be split between them."""
        rig, plan = self.rig, self.plan
        ports = rig.running.cfg.ports
        user_id = str(rig.user.id)
        token = rig.user.token
        tag = uuid.uuid4().hex[:8]

        gateway = rig.gateway_plain()
        for concurrency in plan.layer_levels:
            if concurrency != 1:
                outcome = await _http_run(gateway, concurrency, plan.run_s, plan.max_requests)
                self._record_layer(PEEL_GATEWAY, concurrency, outcome)

        # As the gateway calls them: mutual TLS with the gateway's certificate.
        gateway_mtls = mtls.files_in(rig.running.cfg.work_dir / "mtls", "gateway")
        adapter_channel = create_channel(
            f"127.0.0.1:{ports.adapter}", mtls=gateway_mtls, server_identity="adapter"
        )
        auth_channel = create_channel(f"127.0.0.1:{ports.auth}", mtls=gateway_mtls, server_identity="auth")
        history_channel = create_channel(
            f"127.0.0.1:{ports.history}", mtls=gateway_mtls, server_identity="history"
        )
        redis_client = aioredis.Redis.from_url(rig.redis.url, socket_timeout=5)
        try:
            adapter = inference_pb2_grpc.InferenceServiceStub(adapter_channel)
            auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
            history = history_pb2_grpc.HistoryServiceStub(history_channel)

            async def generate(i: int, w: int) -> None:
                request = inference_pb2.GenerateRequest(model=MODEL, max_tokens=MAX_TOKENS, user=user_id)
                request.messages.append(inference_pb2.ChatMessage(role="user", content=_prompt(tag, i)))
                reply = await adapter.Generate(request, timeout=30)
                if not reply.text:
                    raise RuntimeError("empty answer from the adapter")

            async def authenticate(i: int, w: int) -> None:
                principal = await auth.Authenticate(auth_pb2.AuthenticateRequest(token=token), timeout=10)
                if principal.user_id != user_id:
                    raise RuntimeError("auth answered for another user")

            async def append(i: int, w: int) -> None:
                await history.AppendExchange(
                    history_pb2.AppendExchangeRequest(
                        owner_id=user_id,
                        prompt=_prompt(tag, i),
                        response="sixteen words of a simulated answer",
                        source="model",
                        model=MODEL,
                        usage=history_pb2.Usage(prompt_tokens=10, completion_tokens=16, total_tokens=26),
                        latency_ms=1,
                        request_id=uuid.uuid4().hex,
                        created_at_ms=int(time.time() * 1000),
                        exchange_id=uuid.uuid4().hex,
                    ),
                    timeout=10,
                )

            async def ping(i: int, w: int) -> None:
                await redis_client.ping()

            async with (
                Clients(rig.direct(), 1) as direct,
                Clients(gateway, 1) as plain,
                Clients(rig.ours(), 1) as ours,
            ):

                def over(clients: Clients, target: Target) -> Callable[[int, int], Awaitable[None]]:
                    return lambda i, w: chat(clients[w], target, _prompt(tag, i), MAX_TOKENS)

                # One request at a time through each layer, the layers taking turns in short rounds.
                peel: dict[str, Callable[[int, int], Awaitable[None]]] = {
                    PEEL_DIRECT: over(direct, rig.direct()),
                    PEEL_ADAPTER: generate,
                    PEEL_GATEWAY: over(plain, gateway),
                    PEEL_OURS: over(ours, rig.ours()),
                    PEEL_AUTH: authenticate,
                    PEEL_HISTORY: append,
                    PEEL_REDIS: ping,
                }
                for name, outcome in (await _alternate(peel, plan.peel_rounds, plan.run_s)).items():
                    self.results.peel[name] = outcome.summary()
                    self._record_layer(name, 1, outcome)
            jobs: list[tuple[str, Callable[[int, int], Awaitable[None]]]] = [
                (PEEL_ADAPTER, generate),
                (PEEL_AUTH, authenticate),
                (PEEL_HISTORY, append),
            ]
            for concurrency in plan.layer_levels:
                if concurrency == 1:
                    continue
                for name, job in jobs:
                    await closed_loop(job, concurrency, 30, concurrency * 2)
                    outcome = await closed_loop(job, concurrency, plan.run_s, plan.max_requests)
                    self._record_layer(name, concurrency, outcome)
        finally:
            await adapter_channel.close()
            await auth_channel.close()
            await history_channel.close()
            await redis_client.aclose()

        # Round trips to Redis and PostgreSQL transactions that one request through the whole path costs.
        count = 200 if not plan.quick else 50
        target = rig.ours()
        async with Clients(target, 1) as clients:
            await chat(clients[0], target, _prompt(tag + "w", 0), MAX_TOKENS)
            # A PostgreSQL backend reports its counts at the end of a transaction at most once a second, and
            # when idle only after 10 s: without these waits, counts of earlier phases land in this window.
            await asyncio.sleep(PG_STATS_IDLE_FLUSH_S)
            xacts_before = await asyncio.to_thread(rig.postgres_transactions)
            lookups_before = await asyncio.to_thread(rig.running.auth_cache_lookups)
            with rig.redis_monitor() as monitor:
                outcome = await closed_loop(
                    lambda i, w: chat(clients[w], target, _prompt(tag + "n", i), MAX_TOKENS), 1, 60, count
                )
                # Background writes (history, cache) settle.
                await asyncio.sleep(0.5)
        done = outcome.summary().count
        lookups_after = await asyncio.to_thread(rig.running.auth_cache_lookups)
        await asyncio.sleep(PG_STATS_IDLE_FLUSH_S)
        xacts_after = await asyncio.to_thread(rig.postgres_transactions)
        if done:
            r = self.results
            r.redis_round_trips = {k: v / done for k, v in monitor.client.most_common()}
            r.redis_scripted = {k: v / done for k, v in monitor.scripted.most_common()}
            r.redis_calls_per_request = sum(r.redis_round_trips.values())
            r.postgres_xacts_per_request = (xacts_after - xacts_before) / done
            r.auth_calls_per_request = (lookups_after.get("miss", 0) - lookups_before.get("miss", 0)) / done
        self.log(
            f"   per request: {self.results.redis_calls_per_request:.1f} Redis round trips "
            f"({', '.join(f'{k} {v:.1f}' for k, v in self.results.redis_round_trips.items())}; inside scripts: "
            f"{', '.join(f'{k} {v:.1f}' for k, v in self.results.redis_scripted.items())}), "
            f"{self.results.postgres_xacts_per_request:.1f} PostgreSQL transactions, "
            f"{self.results.auth_calls_per_request:.2f} Authenticate calls"
        )

    def _record_layer(self, name: str, concurrency: int, outcome: Outcome) -> None:
        summary = outcome.summary()
        self.results.layers[(name, level_name(concurrency))] = summary
        self.log(
            f"   {name:30} c{concurrency:<3} p50 {summary.p50 * 1000:7.2f} ms  p99 {summary.p99 * 1000:7.2f} ms  "
            f"{summary.rps:7.0f} req/s  errors {summary.errors}"
        )

    async def ramp(self) -> None:
        """Concurrency stepped up until errors or p99 above the limit: the highest sustained rate."""
        plan = self.plan
        for target in self.targets[1:]:
            steps: list[Step] = []
            for concurrency in plan.ramp:
                outcome = await _http_run(target, concurrency, plan.ramp_step_s, plan.max_requests)
                summary = outcome.summary()
                steps.append(Step(concurrency, summary))
                self.log(
                    f"   {target.name:10} c{concurrency:<4} {summary.rps:7.0f} req/s  p99 {summary.p99 * 1000:7.1f} ms"
                    f"  errors {summary.errors}"
                )
                _, why = sustained(steps, plan.max_p99_s)
                if not why.startswith("no limit"):
                    break
            self.results.ramps[target.name] = steps

    async def profile(self) -> None:
        plan = self.plan
        if plan.profile_s <= 0:
            self.results.profile_note = "not profiled in this run (quick run, or BENCH_PROFILE=0)"
            return
        exe = await asyncio.to_thread(profiling.py_spy, self.rig.work_dir)
        out_dir = self.rig.work_dir / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        roots = self.rig.process_roots(with_litellm=False)
        names = ("gateway", "auth", "adapter", "history")
        rate = 100
        recorders = {}
        target = self.rig.ours()
        async with Clients(target, plan.profile_concurrency) as clients:
            tag = uuid.uuid4().hex[:8]
            warm = lambda i, w: chat(clients[w], target, _prompt(tag + "w", i), MAX_TOKENS)  # noqa: E731
            await closed_loop(warm, plan.profile_concurrency, 30, plan.profile_concurrency * 2)
            for name in names:
                recorders[name] = profiling.record(
                    exe, roots[name], plan.profile_s, out_dir / f"{name}.txt", rate
                )
            load = closed_loop(
                lambda i, w: chat(clients[w], target, _prompt(tag, i), MAX_TOKENS),
                plan.profile_concurrency,
                plan.profile_s + 2,
                plan.max_requests,
            )
            outcome = await load
        for name, proc in recorders.items():
            _, err = await asyncio.to_thread(proc.communicate, None, 60)
            path = out_dir / f"{name}.txt"
            if proc.returncode != 0 or not path.exists():
                self.results.problems.append(
                    f"py-spy on {name}: {err.decode(errors='replace').strip()[-300:]}"
                )
                continue
            stacks = profiling.parse_collapsed(path.read_text())
            self.results.profiles.append(profiling.summarize(name, stacks, plan.profile_s, rate))
        summary = outcome.summary()
        self.results.profile_note = (
            f"py-spy {plan.profile_s} s at {rate} Hz (--nonblocking) on each service while the load generator "
            f"ran cache misses through nginx at concurrency {plan.profile_concurrency} "
            f"({summary.rps:.0f} req/s, p50 {summary.p50 * 1000:.1f} ms during profiling); raw stacks in {_shown(out_dir)}"
        )

    async def _warm(self, target: Target, streaming: bool) -> None:
        """A few requests after a simulator restart: stale pooled connections fail here, not in the figures."""
        async with target.client() as client:
            for i in range(6):
                with contextlib.suppress(Exception):
                    if streaming:
                        await chat_stream(client, target, f"warm {i}", 1)
                    else:
                        await chat(client, target, f"warm {i}", 1)

    async def streaming(self) -> None:
        plan = self.plan
        flags = [
            "--ttft-ms",
            str(plan.stream_ttft_ms),
            "--itl-ms",
            str(plan.stream_itl_ms),
            "--output-tokens",
            str(plan.stream_tokens),
            "--max-num-seqs",
            "256",
        ]
        await asyncio.to_thread(self.rig.restart_simulator, flags)
        # Past the adapter's and LiteLLM's keep-alive, so that no pooled connection to the old process is left.
        await asyncio.sleep(4.5)
        for target in self.targets:
            await self._warm(target, streaming=True)
        for concurrency, count in plan.stream_levels:
            for target in self.targets:
                async with Clients(target, concurrency) as clients:
                    tag = uuid.uuid4().hex[:8]
                    outcome = await closed_loop(
                        lambda i, w, c=clients, t=target, g=tag: chat_stream(
                            c[w], t, _prompt(g, i), plan.stream_tokens
                        ),
                        concurrency,
                        120,
                        count,
                    )
                timings: list[StreamTiming] = outcome.results
                all_gaps = [g for t in timings for g in gaps(t.chunks)]
                result = StreamResult(
                    ttfc=summarize([t.first for t in timings], outcome.errors, outcome.elapsed_s),
                    gaps=summarize(all_gaps),
                    streams=len(timings),
                    errors=outcome.errors,
                )
                self.results.streams[(target.name, level_name(concurrency))] = result
                self.log(
                    f"   {target.name:10} c{concurrency:<3} first chunk p50 {result.ttfc.p50 * 1000:6.1f} ms  "
                    f"gap p50 {result.gaps.p50 * 1000:5.1f} p99 {result.gaps.p99 * 1000:5.1f} ms  errors {outcome.errors}"
                )

    async def memory(self) -> None:
        """RSS of every component, idle and with N streams open at once through each target."""
        plan, rig = self.plan, self.rig
        n = plan.memory_streams
        flags = [
            "--ttft-ms",
            "0",
            "--itl-ms",
            str(plan.memory_itl_ms),
            "--output-tokens",
            str(plan.memory_tokens),
            "--max-num-seqs",
            str(max(256, n + 64)),
        ]
        await asyncio.to_thread(rig.restart_simulator, flags)
        # Every stream generates at once, in the adapter as in the simulator, as it would with LiteLLM: each
        # holds a connection to the model server the whole time.
        await asyncio.to_thread(
            rig.restart_adapter,
            GENAI_ADAPTER_MAX_CONCURRENT=str(max(256, n + 64)),
            GENAI_ADAPTER_MAX_CONNECTIONS=str(max(256, n + 64)),
        )
        await asyncio.sleep(4.5)
        for target in self.targets:
            await self._warm(target, streaming=False)
        processes = ProcessSet(rig.process_roots())
        for target in self.targets:
            idle = processes.rss()
            opened, took, loaded, pss = await self._hold_streams(target, n, processes)
            await asyncio.sleep(2.0)
            left = int((await asyncio.to_thread(rig.sim_stats)).get("running", 0))
            self.results.memory.append(MemoryResult(target.name, n, opened, idle, loaded, took, left, pss))
            self.log(
                f"   {target.name:10} {opened}/{n} streams open after {took:.1f} s; "
                f"{left} still generating upstream 2 s after the clients left"
            )
            if target is not self.targets[-1]:
                await self._wait_sim_idle()

    async def _hold_streams(
        self, target: Target, n: int, processes: ProcessSet
    ) -> tuple[int, float, dict[str, int], dict[str, int]]:
        """Open `n` streams, wait until each has its first chunk (bounded), read RSS, close them all."""
        opened = 0
        all_open = asyncio.Event()
        release = asyncio.Event()
        prompt_tag = uuid.uuid4().hex[:8]

        async def one(client: httpx.AsyncClient, i: int) -> None:
            nonlocal opened
            body = target.chat_body(_prompt(prompt_tag, i), self.plan.memory_tokens, stream=True)
            async with client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    return
                # Held until release: a reader left behind by `break` is finalized at once, and closing it
                # closes the response, which ended every stream a few ms after its first chunk.
                chunks = response.aiter_raw()
                async for chunk in chunks:
                    if _TEXT.search(chunk):
                        break
                else:
                    return
                opened += 1
                if opened == n:
                    all_open.set()
                await release.wait()

        started = time.perf_counter()
        clients = Clients(target, n, timeout_s=300)
        tasks: list[asyncio.Task[None]] = []
        try:
            for i in range(n):
                tasks.append(asyncio.create_task(one(clients[i], i)))
                # Connections in batches: a thousand at once overflows the listen backlog and retries take 1 s.
                if i % 50 == 49:
                    await asyncio.sleep(0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_open.wait(), timeout=90)
            took = time.perf_counter() - started
            await asyncio.sleep(1.0)
            loaded = processes.rss()
            pss = processes.pss()
            loaded["load generator"] = rss_bytes(os.getpid())
        finally:
            release.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await clients.aclose()
        return opened, took, loaded, pss

    async def _wait_sim_idle(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats: dict[str, Any] = await asyncio.to_thread(self.rig.sim_stats)
            if not stats.get("running") and not stats.get("waiting"):
                return
            await asyncio.sleep(0.5)
        self.results.problems.append(
            "memory: the simulator still had streams running a minute after the clients left"
        )
