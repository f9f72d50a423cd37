"""docs/benchmarks.md: how to run the bench, and the figures of the last run, as Markdown tables.

The page is written anew on every run; only the hand-written findings between the NOTES markers are
carried over from the previous page.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from genai_bench.procs import mib
from genai_bench.rig import CACHE_REDIS, LITELLM_MATCHED, LITELLM_REDIS
from genai_bench.stats import Summary, added, fmt_rate, fmt_ratio, ms, ratio, sustained
from genai_bench.suite import (
    PEEL_ADAPTER,
    PEEL_AUTH,
    PEEL_DIRECT,
    PEEL_GATEWAY,
    PEEL_HISTORY,
    PEEL_OURS,
    PEEL_REDIS,
    SEQ,
    Results,
    level_name,
)

NOTES_START = "<!-- notes:start (hand-written, kept when make bench rewrites this page) -->"
NOTES_END = "<!-- notes:end -->"
DEFAULT_NOTES = "_No findings written yet._"

LABELS = {
    "direct": "simulator direct",
    "ours": "ours (nginx TLS -> gateway -> ...)",
    "litellm": "LiteLLM proxy",
    LITELLM_MATCHED: "LiteLLM feature-matched",
}
# LiteLLM's configurations, as the tables name them in ratios.
LITE_SHORT = {"litellm": "LiteLLM", LITELLM_MATCHED: "LiteLLM-fm"}
TARGETS = ("direct", "ours", "litellm", LITELLM_MATCHED)
COMPONENTS = (
    "nginx",
    "gateway",
    "auth",
    "history",
    "adapter",
    "redis",
    CACHE_REDIS,
    "postgres",
    "simulator",
    "litellm",
    LITELLM_MATCHED,
    LITELLM_REDIS,
)
# Our path from nginx to the adapter: what the memory goal of issue 17 counts (Redis and PostgreSQL are
# shared servers whose size is set by their data, not by the streams).
OURS_FRONT = ("nginx", "gateway", "auth", "history", "adapter")

# The goals of issue 17, measured by one `make bench`.
GOAL_ADDED_P50_RATIO = 0.45
GOAL_RPS_RATIO = 3.0
GOAL_CACHE_HIT_RPS = 1500.0
GOAL_STREAMS = 1000
GOAL_STREAMS_PSS_MIB = 300.0
GOAL_CPU_MS = 2.0

HEADER = """\
# Benchmarks

How much our whole path (client -> nginx TLS -> gateway -> auth -> Redis -> inference adapter -> model
server) costs on top of the model server itself, and how it compares with LiteLLM's proxy in front of
the same server, measured in one run on one machine.

## Running it

```
make bench                 # full run, about 6-8 minutes on 2 cores; rewrites this page
make bench BENCH_QUICK=1   # short run (4-6 minutes) to check that everything works
make bench BENCH_PROFILE=0 # full run without the py-spy profile
```

`make bench` runs `python -m genai_bench` (tools/bench). It starts, all on 127.0.0.1:

- the vLLM simulator (tools/vllm-sim) at zero latency: `--ttft-ms 0 --itl-ms 0 --output-tokens 16
  --max-num-seqs 256`; restarted on the same port with `--itl-ms 20` for the streaming part and with
  slow tokens for the memory part;
- the whole stack exactly as the integration tests start it (tests/harness.py: the same processes,
  settings and nginx config as `make run`) on a PostgreSQL and two Redis servers of its own, as `make
  run` and the compose stack have them: the state Redis (limits, the history journal; noeviction) and the
  answer cache's (`GENAI_GATEWAY_CACHE_REDIS_URL`; allkeys-lru, 128 MB), with the bench
  user's limits lifted (`GENAI_GATEWAY_LIMITS_USER='{"requests_per_minute": -1,
  "concurrent_requests": -1}'`: still counted in Redis on every request, never reached),
  `GENAI_ADAPTER_MAX_CONCURRENT=256` (the simulator's `--max-num-seqs`) and nginx's cap on requests open
  at once per client address raised (`GENAI_NGINX_CONN_PER_ADDRESS=2048`; 256 by default), since the
  memory part's thousand streams all come from the load generator's one address;
- LiteLLM's proxy (`litellm[proxy]`, pinned in tools/bench/litellm-requirements.txt, installed on
  first use into `.work/bench/litellm-venv`, never into the project's venv) in front of the same
  simulator, in two configurations side by side, each with one model `openai/sim-model`, no TLS, its
  bundled model-price list instead of the remote one, and as many worker processes as the machine has
  CPUs (`--num_workers`; its CLI starts one by default): our path spreads over several processes and so
  over every core, and LiteLLM gets the same machine. `BENCH_LITELLM_WORKERS=1` measures its default.
  - **LiteLLM** (the baseline): a master key, no database, no Redis: LiteLLM at its fastest, doing less
    per request than our path does.
  - **LiteLLM feature-matched** (`LiteLLM-fm` in ratios): what our path does on every request too,
    with LiteLLM's own features. An API key with requests-per-minute, tokens-per-minute and
    parallel-request limits, counted by LiteLLM's rate limiter in a Redis of its own (shared by its
    workers, with its router's counts; limits high enough never to throttle, as ours are), and its
    Redis response cache (misses look up and store every answer; the cache-hit table repeats one
    prompt). Virtual keys in PostgreSQL are missing: LiteLLM stores them through Prisma, whose query
    and schema engines are native binaries that Prisma downloads from its own server when it is
    installed; no package on PyPI, npm or Debian ships them, and this machine reaches only those
    registries. The key and its limits are therefore read from a file by a `custom_auth` hook
    (tools/bench/src/genai_bench/litellm_keys.py: the key's SHA-256, checked per request, as LiteLLM
    checks a virtual key against its in-memory cache of the database), and the figures of this
    configuration leave out LiteLLM's database work (its key lookups on a cache miss, and the spend
    it writes in batches).

The load generator is a small asyncio client on httpx (tools/bench/src/genai_bench/load.py): HTTP/1.1,
a keep-alive pool with one connection per worker (TLS sessions reused on our path), closed loop
(each worker sends its next request when the last answer is complete), every run bounded in time
and request count, connections opened before the clock starts. Requests are
`POST /v1/chat/completions` with a distinct prompt each (cache misses, and `Cache-Control: no-cache`
on our path) and `max_tokens` 16, except where a table says otherwise. Its own ceiling is its best
rate against the simulator directly (first table), so that it is not mistaken for the bottleneck.

Reading the tables: times in milliseconds as p50 / p90 / p99; req/s counts complete answers over
wall-clock time. `seq` is one request at a time on a new connection each (TCP, and on our path the
TLS handshake, paid every time); `c1`, `c16`, `c64` are 1, 16 and 64 workers on reused connections.
"Added" is a path's percentile minus the simulator's at the same load. Ratios are ours / LiteLLM (either
configuration): below 1 is better for latency, above 1 is better for req/s. On a 2-core machine the load generator, the
simulator and the services share the same two cores, so a figure is the whole system's, not one
process's; the load average at the start says how busy the machine was with other work.

Environment: `BENCH_QUICK=1` short run; `BENCH_PROFILE=0` skip the profile (`=1`: profile a quick run
too); `BENCH_LITELLM=0` skip
LiteLLM; `BENCH_LITELLM_MATCHED=0` skip its feature-matched configuration; `BENCH_LITELLM_WORKERS` LiteLLM's
worker processes (number of CPUs); `GENAI_BENCH_POSTGRES_URL` use this PostgreSQL server instead of starting
one in `.work/bench/pgdata`. Logs of the services: `test-artifacts/logs/bench/`, of LiteLLM:
`.work/bench/litellm.log` and `.work/bench/litellm-fm.log`, profiles: `.work/bench/profiles/`.
"""


@dataclass
class RunInfo:
    command: str
    started: str
    duration_s: float
    load_before: str
    load_after: str
    litellm_version: str
    litellm_workers: int = 0


def machine() -> list[tuple[str, str]]:
    cpu = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    nginx = "not found"
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
        nginx = out.stderr.strip().split("/", 1)[-1]
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu),
        ("memory", memory),
        ("Python", sys.version.split()[0] + f" ({platform.python_implementation()})"),
        ("kernel", platform.release()),
        ("nginx", nginx),
        ("httpx (load generator)", httpx.__version__),
    ]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def triple(s: Summary | None) -> str:
    if s is None or not s.count:
        return "-"
    return f"{ms(s.p50, 2)} / {ms(s.p90, 2)} / {ms(s.p99, 2)}"


def added_triple(path: Summary | None, base: Summary | None) -> str:
    if path is None or base is None or not path.count or not base.count:
        return "-"
    d = added(path, base)
    return f"{ms(d['p50'], 2)} / {ms(d['p90'], 2)} / {ms(d['p99'], 2)}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _levels(results: Results) -> list[str]:
    return [SEQ] + [level_name(c) for c in results.plan.levels]


def _errors_cell(s: Summary | None, kinds: str = "") -> str:
    if s is None:
        return "-"
    if not s.errors:
        return "0"
    return f"{s.errors} ({kinds})" if kinds else str(s.errors)


def render(results: Results, info: RunInfo, notes: str) -> str:
    r = results
    if info.litellm_workers:
        plural = "s" if info.litellm_workers > 1 else ""
        workers = f"{info.litellm_workers} worker{plural}"
        LABELS["litellm"] = f"LiteLLM proxy ({workers})"
        LABELS[LITELLM_MATCHED] = f"LiteLLM feature-matched ({workers}, Redis limits and cache)"
    targets = [t for t in TARGETS if any(k[0] == t for k in r.latency)]
    lites = [t for t in targets if t in LITE_SHORT]
    out: list[str] = [HEADER]

    out.append("## Last run\n")
    rows = [
        ["date (UTC)", info.started],
        ["command", f"`{info.command}`"],
        ["plan", "quick (BENCH_QUICK=1): short runs, figures are rough" if r.plan.quick else "full"],
        ["duration", f"{info.duration_s / 60:.1f} min"],
        ["load average before / after", f"{info.load_before} / {info.load_after}"],
        *[[k, v] for k, v in machine()],
        [
            "LiteLLM",
            f"{info.litellm_version}, {info.litellm_workers} worker process(es)"
            if info.litellm_version
            else "not run",
        ],
    ]
    out.append(table(["", ""], rows) + "\n")

    # --- goals ---------------------------------------------------------------------------------------
    lat = r.latency
    out.append("## Against the goals of issue 17\n")
    goals = _goals(r, lites)
    ceiling, where = r.ceiling()
    if not math.isnan(ceiling):
        fastest = max((s.rps for (t, lv), s in lat.items() if t != "direct" and lv != SEQ), default=math.nan)
        goals.append(
            [
                "load generator not the bottleneck",
                f"its ceiling (simulator direct, {where}) {fmt_rate(ceiling)} req/s; the fastest proxy run {fmt_rate(fastest)} req/s",
                "yes" if not math.isnan(fastest) and ceiling > 1.5 * fastest else "check",
            ]
        )
    out.append(table(["goal", "figures", ""], goals) + "\n" if goals else "_Not measured._\n")
    if lites:
        out.append(
            "Ratios against LiteLLM are judged against the baseline (no database, no Redis: LiteLLM at its "
            "fastest); the feature-matched configuration's figures stand beside them.\n"
        )

    # --- latency -------------------------------------------------------------------------------------
    out.append("## 1. Latency and throughput, cache misses (simulator at zero latency)\n")
    head = ["load"]
    for t in targets:
        head += [f"{LABELS[t]} ms", "req/s"]
    head.append("errors")
    rows = []
    for level in _levels(r):
        row = [level]
        errors = []
        for t in targets:
            s = lat.get((t, level))
            row += [triple(s), fmt_rate(s.rps) if s else "-"]
            if s and s.errors:
                errors.append(f"{t}: {_errors_cell(s, r.error_kinds.get((t, level), ''))}")
        row.append("; ".join(errors) or "0")
        rows.append(row)
    out.append(table(head, rows) + "\n")
    cpu_rows = [
        [level, ms(r.client_cpu_ms.get(("direct", level), math.nan) / 1000, 3)]
        for level in _levels(r)
        if ("direct", level) in r.client_cpu_ms
    ]
    if cpu_rows:
        out.append(
            f"The load generator's ceiling is {fmt_rate(ceiling)} req/s (simulator direct at {where}); it spends "
            + ", ".join(f"{row[1]} ms at {row[0]}" for row in cpu_rows)
            + " of CPU per request against the simulator.\n"
        )

    out.append("## 2. Added over the simulator, and ours / LiteLLM\n")
    head = ["load", "ours added ms", "req/s ours / direct"]
    for lt in lites:
        name = LITE_SHORT[lt]
        head += [f"{name} added ms", f"p50 ours / {name}", f"p99 ours / {name}", f"req/s ours / {name}"]
    rows = []
    for level in _levels(r):
        o, d = lat.get(("ours", level)), lat.get(("direct", level))
        row = [level, added_triple(o, d), fmt_ratio(ratio(o.rps, d.rps)) if o and d else "-"]
        for lt in lites:
            li = lat.get((lt, level))
            row += [
                added_triple(li, d),
                fmt_ratio(ratio(o.p50, li.p50)) if o and li else "-",
                fmt_ratio(ratio(o.p99, li.p99)) if o and li else "-",
                fmt_ratio(ratio(o.rps, li.rps)) if o and li else "-",
            ]
        rows.append(row)
    out.append(table(head, rows) + "\n")

    # --- cache hits ----------------------------------------------------------------------------------
    out.append(
        "## 3. Cache hits (the same prompt repeated, answered from Redis: ours, and LiteLLM feature-matched)\n"
    )
    rows = []
    for c in r.plan.levels:
        level = level_name(c)
        d = lat.get(("direct", level))
        hits = [("ours", r.cache_hit.get(level), lat.get(("ours", level)))]
        hits += [
            (lt, r.cache_hit_other.get((lt, level)), lat.get((lt, level)))
            for lt in lites
            if (lt, level) in r.cache_hit_other
        ]
        for name, s, miss in hits:
            rows.append(
                [
                    level,
                    LABELS[name],
                    triple(s),
                    fmt_rate(s.rps) if s else "-",
                    added_triple(s, d),
                    fmt_ratio(ratio(s.rps, miss.rps)) if s and miss else "-",
                    _errors_cell(s),
                ]
            )
    out.append(
        table(
            [
                "load",
                "path",
                "cache hit ms",
                "req/s",
                "added over simulator direct (miss) ms",
                "req/s hit / its miss",
                "errors",
            ],
            rows,
        )
        + "\n"
    )

    # --- streaming -----------------------------------------------------------------------------------
    p = r.plan
    out.append(
        f"## 4. Streaming (simulator `--ttft-ms {p.stream_ttft_ms} --itl-ms {p.stream_itl_ms} "
        f"--output-tokens {p.stream_tokens}`)\n"
    )
    out.append(
        "First chunk: from sending the request to the first chunk that carries text. Gaps: between "
        "consecutive text chunks of one stream, all streams pooled; the simulator's own gaps are the "
        "`simulator direct` rows.\n"
    )
    rows = []
    for c, count in p.stream_levels:
        level = level_name(c)
        base = r.streams.get(("direct", level))
        for t in targets:
            s = r.streams.get((t, level))
            if s is None:
                continue
            rows.append(
                [
                    f"{level} ({count} streams)",
                    LABELS[t],
                    triple(s.ttfc),
                    ms(s.ttfc.p50 - base.ttfc.p50, 2) if base and t != "direct" else "",
                    triple(s.gaps),
                    str(s.errors),
                ]
            )
    out.append(
        table(["load", "path", "first chunk ms", "added p50 ms", "gap between chunks ms", "errors"], rows)
        + "\n"
        if rows
        else "_Not measured._\n"
    )

    # --- ramp ----------------------------------------------------------------------------------------
    out.append(
        f"## 5. Highest sustained rate (concurrency stepped up until errors or p99 > {p.max_p99_s:.0f} s)\n"
    )
    rows = []
    best_rates: dict[str, float] = {}
    for t, steps in r.ramps.items():
        best, why = sustained(steps, p.max_p99_s)
        best_rates[t] = best.summary.rps if best else math.nan
        trail = ", ".join(
            f"c{s.concurrency}: {fmt_rate(s.summary.rps)} ({ms(s.summary.p99, 0)})" for s in steps
        )
        rows.append(
            [
                LABELS[t],
                f"{fmt_rate(best.summary.rps)} at c{best.concurrency}" if best else "-",
                why,
                trail,
            ]
        )
    for lt in lites:
        if "ours" in best_rates and lt in best_rates:
            rows.append(
                [f"ours / {LITE_SHORT[lt]}", fmt_ratio(ratio(best_rates["ours"], best_rates[lt])), "", ""]
            )
    out.append(
        table(["path", "sustained req/s", "stopped because", "steps: req/s (p99 ms)"], rows) + "\n"
        if rows
        else "_Not measured._\n"
    )

    # --- memory --------------------------------------------------------------------------------------
    out.append(
        f"## 6. Memory with {p.memory_streams} streams open at once (RSS in MiB, process and its children)\n"
    )
    if r.memory:
        out.append(
            f"Simulator restarted with `--itl-ms {p.memory_itl_ms} --max-num-seqs {max(256, p.memory_streams + 64)}` and "
            f"the adapter with `GENAI_ADAPTER_MAX_CONCURRENT={max(256, p.memory_streams + 64)}`, so that every stream "
            "is generating (none waits in a queue) on every path. A stream counts as open once its first text "
            "chunk arrived; RSS is read a second after the last one opened.\n"
        )
        head = ["component", "idle"]
        for m in r.memory:
            head.append(f"{m.opened}/{m.wanted} via {m.target}")
        rows = []
        names = [c for c in (*COMPONENTS, "load generator") if any(c in m.loaded for m in r.memory)]
        for name in names:
            row = [name, mib(r.memory[0].idle.get(name, 0)) if name in r.memory[0].idle else "-"]
            for m in r.memory:
                value = m.loaded.get(name)
                delta = value - m.idle.get(name, 0) if value is not None and name in m.idle else None
                if value is None:
                    row.append("-")
                elif delta is None:
                    row.append(mib(value))
                else:
                    row.append(f"{mib(value)} ({'+' if delta >= 0 else ''}{mib(delta)})")
            rows.append(row)
        path_sets = PATH_COMPONENTS
        totals = ["in the path, without the simulator (RSS)", ""]
        pss_totals = ["in the path, without the simulator (PSS: shared pages split)", ""]
        for m in r.memory:
            comps = path_sets.get(m.target, ())
            totals.append(f"{mib(sum(m.loaded.get(c, 0) for c in comps))}" if comps else "-")
            pss_totals.append(f"{mib(sum(m.loaded_pss.get(c, 0) for c in comps))}" if comps else "-")
        rows.append(totals)
        rows.append(pss_totals)
        out.append(table(head, rows) + "\n")
        out.append(
            "Seconds to open them all: "
            + ", ".join(f"{m.target} {m.seconds_to_open:.1f}" for m in r.memory)
            + ". Generations the simulator still ran 2 s after the clients had closed their streams (a path "
            "that does not cancel upstream keeps the GPU busy for nobody): "
            + ", ".join(f"{m.target} {m.left_running}" for m in r.memory)
            + ". Rows of components outside a path (e.g. LiteLLM while ours is loaded) are shown for completeness. "
            "RSS of a component with several processes (PostgreSQL's backends, nginx's workers, LiteLLM's) counts "
            "their shared memory once per process; the PSS line splits it.\n"
        )
    else:
        out.append("_Not measured._\n")

    # --- breakdown -----------------------------------------------------------------------------------
    out.append("## 7. Where the time goes: per-hop breakdown\n")
    out.append(_breakdown(r))

    # --- profile -------------------------------------------------------------------------------------
    out.append("## 8. Profile of the hot path\n")
    out.append(_profiles(r))

    out.append("## 9. Findings\n")
    out.append(NOTES_START + "\n" + notes.strip() + "\n" + NOTES_END + "\n")

    if r.problems or r.warmup_errors:
        out.append("## Problems in this run\n")
        lines = [f"- {p}" for p in r.problems]
        lines += [
            f"- while opening connections before a run (not in the figures): {w}" for w in r.warmup_errors
        ]
        out.append("\n".join(lines) + "\n")
    out.append(
        "Phase durations: "
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in r.timings.items())
        + ".\n"
    )
    return "\n".join(out)


PATH_COMPONENTS = {
    "direct": (),
    "ours": ("nginx", "gateway", "auth", "history", "adapter", "redis", CACHE_REDIS, "postgres"),
    "litellm": ("litellm",),
    LITELLM_MATCHED: (LITELLM_MATCHED, LITELLM_REDIS),
}


def _goals(r: Results, lites: list[str]) -> list[list[str]]:
    """The rows of issue 17's goals: figures, and met or not met."""
    lat = r.latency
    top = level_name(max(r.plan.levels))
    rows: list[list[str]] = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    direct1 = lat.get(("direct", "c1"))
    ours1 = lat.get(("ours", "c1"))
    if ours1 and direct1:
        ours_added = ours1.p50 - direct1.p50
        figures = [f"ours {ms(ours_added, 2)} ms"]
        judged = math.nan
        for lt in lites:
            li = lat.get((lt, "c1"))
            if li is None:
                continue
            q = ratio(ours_added, li.p50 - direct1.p50)
            # Three decimals: a ratio just above the goal must not print as the goal itself.
            shown = "-" if math.isnan(q) else f"{q:.3f}x"
            figures.append(f"{LITE_SHORT[lt]} {ms(li.p50 - direct1.p50, 2)} ms ({shown})")
            if lt == "litellm":
                judged = q
        rows.append(
            [
                f"added p50 at c1, ours (whole path, TLS) <= {GOAL_ADDED_P50_RATIO}x LiteLLM's",
                ", ".join(figures),
                "-" if math.isnan(judged) else verdict(judged <= GOAL_ADDED_P50_RATIO),
            ]
        )
    ours_top = lat.get(("ours", top))
    if ours_top:
        figures = [f"ours {fmt_rate(ours_top.rps)}"]
        judged = math.nan
        for lt in lites:
            li = lat.get((lt, top))
            if li is None:
                continue
            q = ratio(ours_top.rps, li.rps)
            figures.append(f"{LITE_SHORT[lt]} {fmt_rate(li.rps)} ({fmt_ratio(q)})")
            if lt == "litellm":
                judged = q
        rows.append(
            [
                f"req/s at {top}: ours >= {GOAL_RPS_RATIO:.0f}x LiteLLM's",
                ", ".join(figures),
                "-" if math.isnan(judged) else verdict(judged >= GOAL_RPS_RATIO),
            ]
        )
    hit = r.cache_hit.get(top)
    if hit:
        rows.append(
            [
                f"cache hits at {top}: >= {GOAL_CACHE_HIT_RPS:,.0f} req/s",
                f"{fmt_rate(hit.rps)} req/s, {hit.errors} errors",
                verdict(hit.rps >= GOAL_CACHE_HIT_RPS and not hit.errors),
            ]
        )
    ours_mem = next((m for m in r.memory if m.target == "ours"), None)
    if ours_mem:
        pss = sum(ours_mem.loaded_pss.get(c, 0) for c in OURS_FRONT) / (1024 * 1024)
        parts = ", ".join(f"{c} {mib(ours_mem.loaded_pss.get(c, 0))}" for c in OURS_FRONT)
        figures = f"{ours_mem.opened}/{ours_mem.wanted} open; PSS {pss:.0f} MiB ({parts})"
        if ours_mem.wanted < GOAL_STREAMS:
            state = f"not judged ({ours_mem.wanted} streams in this plan, the goal is {GOAL_STREAMS:,})"
        else:
            state = verdict(ours_mem.opened >= GOAL_STREAMS and pss <= GOAL_STREAMS_PSS_MIB)
        rows.append(
            [
                f"{GOAL_STREAMS:,} open streams: PSS of nginx .. adapter <= {GOAL_STREAMS_PSS_MIB:.0f} MiB",
                figures,
                state,
            ]
        )
    cpu = r.cpu_ms.get(("ours", top))
    if cpu:
        comps = PATH_COMPONENTS["ours"]
        total = sum(cpu.get(c, 0) for c in comps)
        parts = ", ".join(f"{c} {cpu.get(c, 0):.2f}" for c in comps)
        rows.append(
            [
                f"CPU per request at {top}, whole path (per component) <= {GOAL_CPU_MS:.0f} ms",
                f"{total:.2f} ms ({parts})",
                verdict(total <= GOAL_CPU_MS),
            ]
        )
    return rows


def _breakdown(r: Results) -> str:
    peel = r.peel
    parts: list[str] = []
    d1, a1, g1, o1 = (peel.get(k) for k in (PEEL_DIRECT, PEEL_ADAPTER, PEEL_GATEWAY, PEEL_OURS))
    auth1, hist1, redis1 = (peel.get(k) for k in (PEEL_AUTH, PEEL_HISTORY, PEEL_REDIS))
    if d1 and a1 and g1 and o1:
        parts.append(
            "The path peeled layer by layer, one request at a time (c1, connections reused), the layers taking "
            f"turns in {r.plan.peel_rounds} rounds so that background load hits them alike: what a hop costs is "
            "the difference between the layer that includes it and the one below. p50 in ms.\n"
        )
        rows = [
            [PEEL_DIRECT, ms(d1.p50, 2), "", ""],
            [
                f"{PEEL_ADAPTER} -> simulator",
                ms(a1.p50, 2),
                ms(a1.p50 - d1.p50, 2),
                "inference adapter (gRPC in, aiohttp out)",
            ],
            [
                f"{PEEL_GATEWAY} -> ... -> simulator",
                ms(g1.p50, 2),
                ms(g1.p50 - a1.p50, 2),
                "gateway, with its calls to auth, Redis, history",
            ],
            [PEEL_OURS, ms(o1.p50, 2), ms(o1.p50 - g1.p50, 2), "nginx and TLS (reused connection)"],
        ]
        parts.append(table(["layer", "p50 ms", "hop adds ms", "hop"], rows) + "\n")
        gateway_hop = g1.p50 - a1.p50
        inside = []
        accounted = 0.0
        if auth1:
            # The gateway caches Authenticate answers: only the requests it could not answer itself pay.
            calls = 1.0 if math.isnan(r.auth_calls_per_request) else r.auth_calls_per_request
            inside.append(
                [
                    f"auth Authenticate: {ms(auth1.p50, 2)} ms a gRPC call (JWT, revocation in Redis, user row in "
                    f"PostgreSQL) x {calls:.2f} calls a request (the rest from the gateway's credential cache)",
                    ms(calls * auth1.p50, 2),
                ]
            )
            accounted += calls * auth1.p50
        if hist1:
            # The answer waits only for its exchange's RPUSH to the journal (counted with Redis below); the
            # gateway writes the journal to history afterwards, in batches.
            inside.append(
                [
                    f"history: not on the answer's path (the exchange goes to the journal in Redis; a single "
                    f"AppendExchange call alone takes {ms(hist1.p50, 2)} ms, the journal's batches write many at once)",
                    "0",
                ]
            )
        if redis1 and not math.isnan(r.redis_calls_per_request):
            trips = r.redis_calls_per_request
            inside.append(
                [
                    f"Redis: {trips:.1f} round trips x {ms(redis1.p50, 3)} ms (a PING's; auth's, when it is "
                    "called, included above too; the Lua scripts' own work not)",
                    ms(trips * redis1.p50, 2),
                ]
            )
            accounted += trips * redis1.p50
        inside.append(["the rest: the gateway's own work and waits", ms(gateway_hop - accounted, 2)])
        cpu1 = r.cpu_ms.get(("ours", "c1"), {})
        note = ""
        if cpu1:
            note = (
                f" For comparison, at c1 each request costs {cpu1.get('gateway', math.nan):.2f} ms of the gateway's "
                f"CPU, {cpu1.get('auth', math.nan):.2f} ms of auth's, {cpu1.get('history', math.nan):.2f} ms of "
                f"history's, {cpu1.get('adapter', math.nan):.2f} ms of the adapter's and "
                f"{cpu1.get('postgres', math.nan):.2f} ms of PostgreSQL's (table below): one request at a time, "
                "latency is mostly the CPU of each hop in turn."
            )
        parts.append(
            f"Inside the gateway hop ({ms(gateway_hop, 2)} ms at p50), from the calls measured alone:\n\n"
            + table(["part", "p50 ms"], inside)
            + "\n"
            + note
            + "\n"
        )
        if not math.isnan(r.postgres_xacts_per_request):
            parts.append(
                f"One request through the whole path (cache miss) costs {r.redis_calls_per_request:.1f} Redis "
                "round trips ("
                + ", ".join(f"{name} {calls:.1f}" for name, calls in r.redis_round_trips.items())
                + "), whose Lua scripts run "
                + ", ".join(f"{name} {calls:.1f}" for name, calls in r.redis_scripted.items())
                + f" more commands inside Redis, {r.postgres_xacts_per_request:.1f} PostgreSQL "
                f"transactions and {r.auth_calls_per_request:.2f} Authenticate calls (Redis MONITOR, "
                "pg_stat_database and the gateway's credential cache counters over a sequential run; every "
                "statement outside an explicit transaction counts as one transaction).\n"
            )
    else:
        parts.append("_Not measured._\n")

    rows = []
    for (name, level), s in sorted(r.layers.items(), key=lambda kv: (kv[0][0], int(kv[0][1][1:]))):
        rows.append([name, level, triple(s), fmt_rate(s.rps), _errors_cell(s)])
    if rows:
        parts.append("Each hop alone:\n\n" + table(["hop", "load", "ms", "req/s", "errors"], rows) + "\n")

    if r.cpu_ms:
        keys = sorted(r.cpu_ms, key=lambda k: (TARGETS.index(k[0]), int(k[1][1:])))
        names = [c for c in (*COMPONENTS, "load generator") if any(c in r.cpu_ms[k] for k in keys)]
        head = ["component"] + [f"{LABELS[t]}, {level}" for t, level in keys]
        rows = []
        for name in names:
            rows.append([name] + [f"{r.cpu_ms[k][name]:.2f}" if name in r.cpu_ms[k] else "-" for k in keys])
        total_row = ["proxy path total (without simulator and load generator)"]
        for k in keys:
            comps = PATH_COMPONENTS.get(k[0], ())
            total_row.append(f"{sum(r.cpu_ms[k].get(c, 0) for c in comps):.2f}" if comps else "-")
        rows.append(total_row)
        parts.append(
            "CPU time per request (ms, user + system, from /proc), by component. Two cores give 2000 ms of CPU a "
            "second to the whole machine, the load generator and the simulator included, so the proxy path's "
            "total bounds its rate:\n\n" + table(head, rows) + "\n"
        )
    return "\n".join(parts)


def _profiles(r: Results) -> str:
    if not r.profiles:
        return (r.profile_note or "_Not profiled._") + "\n"
    parts = [r.profile_note + ".\n"]
    rows = []
    for prof in r.profiles:
        cats = ", ".join(
            f"{name} {count * 100 / prof.samples:.0f}%"
            for name, count in prof.by_category[:6]
            if prof.samples
        )
        rows.append([prof.name, str(prof.samples), cats])
    parts.append(table(["service", "samples", "where its CPU went (innermost Python frame)"], rows) + "\n")
    for prof in r.profiles:
        if prof.name != "gateway" or not prof.samples:
            continue
        rows = [[fn.replace("|", "\\|"), f"{count * 100 / prof.samples:.1f}%"] for fn, count in prof.top_self]
        parts.append("Gateway, top functions by own time:\n\n" + table(["function", "samples"], rows) + "\n")
        rows = [
            [fn.replace("|", "\\|"), f"{count * 100 / prof.samples:.1f}%"] for fn, count in prof.top_project
        ]
        parts.append(
            "Gateway, the project's functions by inclusive time (their callees included):\n\n"
            + table(["function", "samples"], rows)
            + "\n"
        )
    for prof in r.profiles:
        if prof.name == "gateway" or not prof.samples:
            continue
        rows = [
            [fn.replace("|", "\\|"), f"{count * 100 / prof.samples:.1f}%"] for fn, count in prof.top_self[:6]
        ]
        parts.append(
            f"{prof.name}, top functions by own time:\n\n" + table(["function", "samples"], rows) + "\n"
        )
    return "\n".join(parts)


def previous_notes(path: Path) -> str:
    try:
        text = path.read_text()
    except OSError:
        return DEFAULT_NOTES
    match = re.search(re.escape(NOTES_START) + r"\n(.*?)" + re.escape(NOTES_END), text, re.S)
    return match.group(1).strip() if match and match.group(1).strip() else DEFAULT_NOTES
