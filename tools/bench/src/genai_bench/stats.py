"""The arithmetic of the report: percentiles, throughput, added latency and ratios.

Kept apart from the load generator so that it can be checked without any server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default and `statistics.quantiles(method="inclusive")`: the
    smallest value is the 0th percentile, the largest the 100th. NaN for no values.
    """
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, not {p}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latencies (seconds) of one run and its throughput."""

    count: int
    errors: int
    elapsed_s: float
    p50: float
    p90: float
    p99: float
    mean: float

    @property
    def rps(self) -> float:
        """Successful requests per second over the run's wall-clock time."""
        return self.count / self.elapsed_s if self.elapsed_s > 0 else math.nan

    @property
    def error_rate(self) -> float:
        total = self.count + self.errors
        return self.errors / total if total else 0.0

    def get(self, name: str) -> float:
        return float(getattr(self, name))


def summarize(latencies: Sequence[float], errors: int = 0, elapsed_s: float = math.nan) -> Summary:
    return Summary(
        count=len(latencies),
        errors=errors,
        elapsed_s=elapsed_s,
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        mean=sum(latencies) / len(latencies) if latencies else math.nan,
    )


def added(path: Summary, baseline: Summary) -> dict[str, float]:
    """Latency a path adds over the baseline, percentile by percentile (p50 of one minus p50 of the other).

    A difference of percentiles, not a percentile of differences: the two runs are separate samples.
    """
    return {f"p{p}": path.get(f"p{p}") - baseline.get(f"p{p}") for p in PERCENTILES}


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; NaN when either is missing or theirs is zero."""
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def gaps(times: Sequence[float]) -> list[float]:
    """Intervals between consecutive arrival times (e.g. of the chunks of one stream)."""
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


@dataclass(frozen=True)
class Step:
    """One step of a ramp: the concurrency and what it achieved."""

    concurrency: int
    summary: Summary


def sustained(steps: Sequence[Step], max_p99_s: float = 1.0) -> tuple[Step | None, str]:
    """The best step of a ramp before the first one with errors or p99 above `max_p99_s`.

    Returns that step (None when even the first failed) and why the ramp stopped.
    """
    best: Step | None = None
    for step in steps:
        s = step.summary
        if s.errors:
            return best, f"errors at concurrency {step.concurrency} ({s.errors} of {s.count + s.errors})"
        if s.p99 > max_p99_s:
            return (
                best,
                f"p99 {s.p99 * 1000:.0f} ms > {max_p99_s * 1000:.0f} ms at concurrency {step.concurrency}",
            )
        if best is None or s.rps > best.summary.rps:
            best = step
    last = steps[-1].concurrency if steps else 0
    return best, f"no limit reached up to concurrency {last}"


def ms(seconds: float, digits: int = 1) -> str:
    """Seconds as milliseconds for a table cell ("-" when missing)."""
    if seconds is None or math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def fmt_rate(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"
