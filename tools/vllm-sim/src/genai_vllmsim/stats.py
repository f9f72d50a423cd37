"""Counters of what reached the simulator, shown as vLLM-named Prometheus metrics and as JSON.

The metric names, types and labels are vLLM's (v0.11, V1 engine), so that dashboards and alerts built for
vLLM read the simulator alike: `vllm:num_requests_running`/`waiting`, `vllm:kv_cache_usage_perc`,
`vllm:prefix_cache_queries_total`/`hits_total`, `vllm:time_to_first_token_seconds`,
`vllm:inter_token_latency_seconds` (and its older name `vllm:time_per_output_token_seconds`),
`vllm:e2e_request_latency_seconds`, `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
`vllm:request_success_total`. The simulator's own counts are `genai_sim_*`.

Simulated, not measured: KV-cache usage is the share of the engine's sequences in use; prefix-cache
queries and hits are counted in tokens as vLLM counts them, by the simulated cache of `prefix_cache`.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from genai_vllmsim.slots import Slots

# vLLM's bucket edges for these histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
LAST_REQUESTS = 20


class Histogram:
    """Bucket counts, sum and count, kept without locks for the hot path; exported by `Stats.collect`."""

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += times
        self.sum += value * times
        self.count += times

    def family(self, name: str, documentation: str, model: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for edge, n in zip((*self.edges, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if edge == float("inf") else repr(float(edge)), cumulative))
        family = HistogramMetricFamily(name, documentation, labels=["model_name"])
        family.add_metric([model], buckets, self.sum)
        return family


class Stats(Collector):
    """Everything the simulator counts; `reset()` zeroes it between tests (live gauges excepted).

    started: generation requests accepted (valid body, served model), faults included;
    finished: requests that got their whole output; cancelled: the client went away first
    (queued or generating); errors: injected faults; rejected: invalid requests (400/401/404).
    """

    def __init__(self, model: str, slots: Slots) -> None:
        self.slots = slots
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.errors = 0
        self.rejected = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.success_by_reason: dict[str, int] = {"stop": 0, "length": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.last_requests: deque[Any] = deque(maxlen=LAST_REQUESTS)
        # X-Request-Id of the last requests ("" when none came), as last_requests.
        self.last_request_ids: deque[str] = deque(maxlen=LAST_REQUESTS)

    def as_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "rejected": self.rejected,
            "running": self.slots.running,
            "waiting": self.slots.waiting,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "prefix_cache_queries": self.prefix_queries,
            "prefix_cache_hits": self.prefix_hits,
            "last_requests": list(self.last_requests),
            "last_request_ids": list(self.last_request_ids),
        }

    def collect(self) -> Iterator[Metric]:
        model = [self.model]

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=["model_name"])
            family.add_metric(model, value)
            return family

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, documentation, labels=["model_name"])
            family.add_metric(model, value)
            return family

        yield gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.", self.slots.running
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", self.slots.waiting
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage (simulated: share of sequences in use).",
            self.slots.running / self.slots.limit,
        )
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            self.prefix_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            self.prefix_hits,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=["finished_reason", "model_name"],
        )
        for reason, n in self.success_by_reason.items():
            success.add_metric([reason, self.model], n)
        yield success
        yield self.ttft.family(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.model
        )
        yield self.itl.family(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.model
        )
        yield self.itl.family(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (older name of the inter-token latency).",
            self.model,
        )
        yield self.e2e.family(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.model
        )
        yield counter("genai_sim_requests_started", "Generation requests accepted.", self.started)
        yield counter("genai_sim_requests_finished", "Requests that got their whole output.", self.finished)
        yield counter("genai_sim_requests_cancelled", "Requests whose client left first.", self.cancelled)
        yield counter("genai_sim_requests_errors", "Requests answered with an injected fault.", self.errors)
        yield counter("genai_sim_requests_rejected", "Invalid requests (400, 401, 404).", self.rejected)
