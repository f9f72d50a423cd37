"""The load generator: a small asyncio client on httpx (HTTP/1.1, keep-alive pool), closed loop.

`concurrency` workers each send one request, wait for the whole answer, and send the next, until the
time or the request count runs out (both bounded). Its own ceiling is measured against the simulator
called directly, so that the report shows it is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from genai_bench.stats import Summary, summarize

MODEL = "sim-model"
# Below uvicorn's 5 s keep-alive (simulator, gateway, LiteLLM), so that an idle pooled connection is
# dropped here before the server closes it under a request.
KEEPALIVE_EXPIRY_S = 4.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible endpoint under test."""

    name: str
    # Up to and including /v1.
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True
    model: str = MODEL

    def client(self, keepalive: bool = True, timeout_s: float = REQUEST_TIMEOUT_S) -> httpx.AsyncClient:
        """A client with one connection, kept alive between requests unless `keepalive` is off."""
        limits = httpx.Limits(
            max_connections=1,
            max_keepalive_connections=1 if keepalive else 0,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        return httpx.AsyncClient(
            base_url=self.base_url,
            headers=self.headers,
            # Plain HTTP needs no certificates; httpx would still load the CA bundle for every client.
            verify=self.verify if self.base_url.startswith("https:") else False,
            limits=limits,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            http1=True,
            http2=False,
        )

    def chat_body(self, prompt: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
        }


class Clients:
    """One httpx client per worker, each holding one keep-alive connection.

    Not one shared pool: httpx's pool spends CPU on every request in proportion to the connections it
    holds (encode/httpx#3215); at 64 connections that made the load generator itself the bottleneck,
    about ten times the CPU per request of one connection per client.
    """

    def __init__(
        self, target: Target, workers: int, keepalive: bool = True, timeout_s: float = REQUEST_TIMEOUT_S
    ):
        self.items = [target.client(keepalive, timeout_s) for _ in range(workers)]

    def __getitem__(self, worker: int) -> httpx.AsyncClient:
        return self.items[worker]

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.items), return_exceptions=True)

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class BadStatus(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


async def chat(client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int) -> None:
    """One whole (not streamed) chat completion; raises unless it is a 200 with choices."""
    response = await client.post("/chat/completions", json=target.chat_body(prompt, max_tokens))
    if response.status_code != 200 or b'"choices"' not in response.content:
        raise BadStatus(response.status_code, response.content)


@dataclass
class StreamTiming:
    """When a streamed answer's chunks with text arrived, in seconds after the request was sent."""

    chunks: list[float]

    @property
    def first(self) -> float:
        return self.chunks[0] if self.chunks else float("nan")


def _has_text(data: str) -> bool:
    try:
        event = json.loads(data)
    except ValueError:
        return False
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or choice.get("text"):
            return True
    return False


async def chat_stream(
    client: httpx.AsyncClient, target: Target, prompt: str, max_tokens: int
) -> StreamTiming:
    """One streamed chat completion; the arrival time of each chunk that carries text."""
    started = time.perf_counter()
    arrivals: list[float] = []
    body = target.chat_body(prompt, max_tokens, stream=True)
    async with client.stream("POST", "/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise BadStatus(response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]" and _has_text(line[6:]):
                arrivals.append(time.perf_counter() - started)
    if not arrivals:
        raise BadStatus(200, b"stream without text")
    return StreamTiming(arrivals)


@dataclass
class Outcome:
    """What one closed-loop run measured."""

    latencies: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    # CPU time of this (the load generator's) process during the run.
    client_cpu_s: float = 0.0

    def summary(self) -> Summary:
        return summarize(self.latencies, self.errors, self.elapsed_s)

    def describe_errors(self) -> str:
        return ", ".join(f"{kind} x{n}" for kind, n in self.error_kinds.most_common(3))


def _kind(exc: BaseException) -> str:
    if isinstance(exc, BadStatus):
        return f"HTTP {exc.status}"
    return type(exc).__name__


async def closed_loop(
    job: Callable[[int, int], Awaitable[Any]],
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> Outcome:
    """Run `job(i, worker)` from `concurrency` workers until `duration_s` passed or `max_requests` were
    sent; `i` counts requests, `worker` (0..concurrency-1) says whose client to use."""
    outcome = Outcome()
    counter = itertools.count()
    cpu_before = time.process_time()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker(w: int) -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= max_requests:
                return
            sent = time.perf_counter()
            try:
                result = await job(i, w)
            except Exception as exc:
                outcome.errors += 1
                outcome.error_kinds[_kind(exc)] += 1
            else:
                outcome.latencies.append(time.perf_counter() - sent)
                outcome.results.append(result)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    outcome.elapsed_s = time.perf_counter() - started
    outcome.client_cpu_s = time.process_time() - cpu_before
    return outcome
