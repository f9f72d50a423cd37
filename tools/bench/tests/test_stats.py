"""The bench's arithmetic: percentiles, added latency, ratios, the ramp's stopping rule, profile parsing."""

from __future__ import annotations

import math
import statistics

import pytest

from genai_bench import profiling
from genai_bench.stats import (
    Step,
    added,
    gaps,
    ms,
    percentile,
    ratio,
    summarize,
    sustained,
)


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    # rank (4 - 1) * 0.9 = 2.7: 30 + 0.7 * (40 - 30)
    assert percentile(values, 90) == pytest.approx(37.0)


def test_percentile_ignores_input_order_and_matches_the_standard_library() -> None:
    values = [0.007, 0.001, 0.003, 0.002, 0.010, 0.004, 0.005, 0.009, 0.006, 0.008, 0.0105]
    expected = statistics.quantiles(values, n=100, method="inclusive")
    for p in (50, 90, 99):
        assert percentile(values, p) == pytest.approx(expected[p - 1])
    assert percentile(values, 50) == 0.006


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([0.5], 99) == 0.5
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_throughput_counts_successes_over_wall_time() -> None:
    summary = summarize([0.01] * 90, errors=10, elapsed_s=3.0)
    assert summary.count == 90
    assert summary.rps == pytest.approx(30.0)
    assert summary.error_rate == pytest.approx(0.1)
    assert summary.p99 == pytest.approx(0.01)
    assert math.isnan(summarize([], elapsed_s=0.0).rps)


def test_added_latency_is_a_difference_of_percentiles() -> None:
    path = summarize([0.010, 0.012, 0.014, 0.016, 0.100])
    direct = summarize([0.002, 0.002, 0.003, 0.003, 0.004])
    extra = added(path, direct)
    assert extra["p50"] == pytest.approx(0.014 - 0.003)
    assert extra["p99"] == pytest.approx(path.p99 - direct.p99)
    assert set(extra) == {"p50", "p90", "p99"}


def test_ratio_is_ours_over_theirs_and_nan_when_undefined() -> None:
    assert ratio(150.0, 100.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_gaps_between_consecutive_arrivals() -> None:
    assert gaps([0.0, 0.02, 0.05, 0.05]) == pytest.approx([0.02, 0.03, 0.0])
    assert gaps([0.3]) == []


def _step(concurrency: int, rps: float, p99: float, errors: int = 0) -> Step:
    count = int(rps * 2)
    slow = count // 20  # 5% of the requests at `p99`, so that the 99th percentile is that value
    latencies = [0.001] * (count - slow) + [p99] * slow
    return Step(concurrency, summarize(latencies, errors=errors, elapsed_s=2.0))


def test_sustained_rate_stops_at_the_first_step_over_the_p99_limit() -> None:
    steps = [_step(4, 100, 0.05), _step(8, 180, 0.2), _step(16, 170, 0.4), _step(32, 200, 1.5)]
    best, why = sustained(steps, max_p99_s=1.0)
    assert best is not None
    # The best rate before the limit was crossed, not the last step's and not the over-limit one.
    assert best.concurrency == 8
    assert "concurrency 32" in why


def test_sustained_rate_stops_at_errors_and_may_find_none() -> None:
    best, why = sustained([_step(4, 100, 0.05, errors=3)], max_p99_s=1.0)
    assert best is None
    assert "errors" in why
    best, why = sustained([_step(4, 100, 0.05), _step(8, 150, 0.1)], max_p99_s=1.0)
    assert best is not None and best.concurrency == 8
    assert why.startswith("no limit")


def test_ms_formats_seconds_and_missing_values() -> None:
    assert ms(0.0123456, 2) == "12.35"
    assert ms(math.nan) == "-"


def test_collapsed_stacks_are_summed_by_category_and_function() -> None:
    text = "\n".join(
        [
            "run (uvicorn/server.py:10);handle (starlette/routing.py:50);dumps (json/__init__.py:231) 30",
            "run (uvicorn/server.py:10);current_principal (/w/services/gateway/src/genai_gateway/security.py:24);"
            "__call__ (/v/lib/python3.11/site-packages/grpc/aio/_call.py:300) 50",
            "run (uvicorn/server.py:10);current_principal (/w/services/gateway/src/genai_gateway/security.py:27) 20",
            "garbage line",
        ]
    )
    stacks = profiling.parse_collapsed(text)
    assert sum(stacks.values()) == 100
    prof = profiling.summarize("gateway", stacks, seconds=2, rate=100)
    assert prof.samples == 100
    assert prof.cpu_share == pytest.approx(0.5)
    categories = dict(prof.by_category)
    assert categories["gRPC (grpc.aio)"] == 50
    assert categories["json"] == 30
    assert categories["project code (genai_*)"] == 20
    # Inclusive time of a project function counts both of its lines once per sample.
    top_project = dict(prof.top_project)
    assert top_project["current_principal (genai_gateway/security.py)"] == 70
