"""The report's goals of issue 17 and its LiteLLM columns, rendered from made-up results (no server)."""

from __future__ import annotations

from genai_bench import report
from genai_bench.rig import LITELLM_MATCHED
from genai_bench.stats import Summary
from genai_bench.suite import MemoryResult, Plan, Results

MIB = 1024 * 1024


def run(p50_ms: float, rps: float, errors: int = 0) -> Summary:
    # One second of requests at `rps`, all at the same latency.
    return Summary(int(rps), errors, 1.0, p50_ms / 1000, p50_ms / 1000, p50_ms / 1000, p50_ms / 1000)


def results(
    ours_c1_ms: float, ours_c64_rps: float, hit_rps: float, front_pss_mib: int, cpu_ms: float
) -> Results:
    r = Results(Plan())
    for level, direct, lite, fm in (
        ("c1", (1.0, 1000), (11.0, 100), (15.0, 80)),
        ("c64", (20, 2000), (250, 200), (300, 150)),
    ):
        r.latency[("direct", level)] = run(*direct)
        r.latency[("litellm", level)] = run(*lite)
        r.latency[(LITELLM_MATCHED, level)] = run(*fm)
    r.latency[("ours", "c1")] = run(ours_c1_ms, 300)
    r.latency[("ours", "c64")] = run(100, ours_c64_rps)
    r.cache_hit["c64"] = run(40, hit_rps)
    r.cache_hit_other[(LITELLM_MATCHED, "c64")] = run(200, 300)
    pss = {name: front_pss_mib * MIB // 5 for name in report.OURS_FRONT} | {"postgres": 500 * MIB}
    r.memory.append(MemoryResult("ours", 1000, 1000, {}, {}, 3.0, 0, pss))
    # Half on the gateway, the rest spread over the others of the path.
    rest = cpu_ms / 2 / 6
    r.cpu_ms[("ours", "c64")] = (
        {"gateway": cpu_ms / 2}
        | {c: rest for c in ("nginx", "auth", "history", "adapter", "redis", "postgres")}
        | {"simulator": 5.0, "load generator": 5.0}
    )
    return r


def goals(r: Results) -> dict[str, list[str]]:
    """Issue 17's rows by the words their goal starts with (e.g. "added p50 at c1")."""
    rows = report._goals(r, ["litellm", LITELLM_MATCHED])
    named = {}
    for row in rows:
        name = next(n for n in NAMES if row[0].startswith(n))
        named[name] = row
    return named


NAMES = (
    "added p50 at c1",
    "req/s at c64",
    "cache hits at c64",
    "1,000 open streams",
    "CPU per request at c64",
)


def test_every_goal_of_issue_17_met() -> None:
    # Added p50: ours 4 ms against LiteLLM's 10 ms (0.40x); req/s 700 against 200 (3.5x).
    rows = goals(results(5.0, 700, 1600, 290, 1.8))
    assert [row[2] for row in rows.values()] == ["met"] * 5
    assert "LiteLLM 10.00 ms (0.400x)" in rows["added p50 at c1"][1]
    assert "LiteLLM-fm 14.00 ms" in rows["added p50 at c1"][1]
    assert "LiteLLM 200 (3.50x)" in rows["req/s at c64"][1]
    assert "1000/1000 open" in rows["1,000 open streams"][1]
    # The whole path's CPU is shown with each component's share.
    cpu = rows["CPU per request at c64"][1]
    assert cpu.startswith("1.80 ms (") and "gateway 0.90" in cpu and "postgres 0.15" in cpu


def test_every_goal_of_issue_17_missed() -> None:
    rows = goals(results(6.0, 500, 1400, 310, 2.2))
    assert [row[2] for row in rows.values()] == ["not met"] * 5


def test_the_page_shows_both_litellm_configurations() -> None:
    r = results(5.0, 700, 1600, 290, 1.8)
    info = report.RunInfo("make bench", "2026-01-01 00:00", 60, "0 0 0", "0 0 0", "1.0", 2)
    page = report.render(r, info, report.DEFAULT_NOTES)
    assert "## Against the goals of issue 17" in page
    assert "LiteLLM proxy (2 workers) ms" in page and "LiteLLM feature-matched (2 workers" in page
    assert "req/s ours / LiteLLM |" in page and "req/s ours / LiteLLM-fm |" in page
    assert "| c64 | LiteLLM feature-matched" in page
