"""Counters of what reached the simulator, shown as vLLM-named Prometheus metrics and as JSON."""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

from genai_vllmsim.slots import Slots

# vLLM's bucket edges for these two histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
LAST_REQUESTS = 20


class Histogram:
    """A Prometheus histogram without the client library: bucket counts, sum and count."""

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.counts = [0] * (len(edges) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str, lines: list[str]) -> None:
        cumulative = 0
        for edge, n in zip((*self.edges, float("inf")), self.counts, strict=True):
            cumulative += n
            le = "+Inf" if edge == float("inf") else repr(float(edge))
            lines.append(f'{name}_bucket{{le="{le}",{labels}}} {cumulative}')
        lines.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")


class Stats:
    """Everything the simulator counts; `reset()` zeroes it between tests (live gauges excepted).

    started: generation requests accepted (valid body, served model), faults included;
    finished: requests that got their whole output; cancelled: the client went away first
    (queued or generating); errors: injected faults; rejected: invalid requests (400/401/404).
    """

    def __init__(self, model: str, slots: Slots) -> None:
        self.slots = slots
        self._labels = 'model_name="{}"'.format(
            model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        )
        self.reset()

    def reset(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.errors = 0
        self.rejected = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success_by_reason: dict[str, int] = {"stop": 0, "length": 0}
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.last_requests: deque[Any] = deque(maxlen=LAST_REQUESTS)

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
            "last_requests": list(self.last_requests),
        }

    def render_prometheus(self) -> str:
        labels = self._labels
        lines: list[str] = []

        def header(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        simple = (
            (
                "vllm:num_requests_running",
                "gauge",
                "Requests in model execution batches.",
                self.slots.running,
            ),
            ("vllm:num_requests_waiting", "gauge", "Requests waiting to be processed.", self.slots.waiting),
            ("vllm:prompt_tokens_total", "counter", "Prefill tokens processed.", self.prompt_tokens),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Generation tokens processed.",
                self.generation_tokens,
            ),
            ("genai_sim_requests_started_total", "counter", "Generation requests accepted.", self.started),
            (
                "genai_sim_requests_finished_total",
                "counter",
                "Requests that got their whole output.",
                self.finished,
            ),
            (
                "genai_sim_requests_cancelled_total",
                "counter",
                "Requests whose client left first.",
                self.cancelled,
            ),
            (
                "genai_sim_requests_errors_total",
                "counter",
                "Requests answered with an injected fault.",
                self.errors,
            ),
            (
                "genai_sim_requests_rejected_total",
                "counter",
                "Invalid requests (400, 401, 404).",
                self.rejected,
            ),
        )
        for name, kind, help_text, value in simple:
            header(name, kind, help_text)
            lines.append(f"{name}{{{labels}}} {float(value)!r}")
        header("vllm:request_success_total", "counter", "Count of successfully processed requests.")
        for reason, n in self.success_by_reason.items():
            lines.append(f'vllm:request_success_total{{finished_reason="{reason}",{labels}}} {float(n)!r}')
        header("vllm:time_to_first_token_seconds", "histogram", "Time to first token in seconds.")
        self.ttft.render("vllm:time_to_first_token_seconds", labels, lines)
        header("vllm:e2e_request_latency_seconds", "histogram", "End to end request latency in seconds.")
        self.e2e.render("vllm:e2e_request_latency_seconds", labels, lines)
        lines.append("")
        return "\n".join(lines)
