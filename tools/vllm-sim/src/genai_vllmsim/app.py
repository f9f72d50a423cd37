"""The HTTP surface (OpenAI-compatible endpoints, introspection) and the simulated generation.

Error bodies: current vLLM answers `{"error": {"message", "type", "param", "code"}}`; older
releases answered `{"object": "error", "message", "type", "param", "code"}`. The simulator emits the
first by default and the second with `--error-format legacy` (or header `x-sim-error-format`), so
clients can be tested against both. A missing or wrong API key gets vLLM's `{"error": "Unauthorized"}`.

Per-request headers override the flags: `x-sim-ttft-ms`, `x-sim-itl-ms`, `x-sim-prefill-ms-per-1k-tokens`,
`x-sim-output-tokens`, `x-sim-error` (500|429|400|reset|none) and `x-sim-error-format` (nested|legacy).

Time to first token, counted from when a request gets one of the `--max-num-seqs` slots: `--ttft-ms`, plus
`--prefill-ms-per-1k-tokens` for each prompt token not found in the prefix cache (see `prefix_cache`); the
lookup happens when the request is scheduled, and its prompt's blocks are cached once its prefill is done.

Kill switch (a replica dying, for failover tests): `POST /sim/kill` ends the process at once, after its
own answer; `POST /sim/kill?after_tokens=N` (or `--die-after-tokens N`) once any response has sent N tokens
(0: once a request is scheduled, before its first token). It ends with `os._exit`, as a crash or the OOM
killer would: nothing is flushed or closed in order, every open connection is cut where it stands (a stream
mid-way ends without `[DONE]`), and new connections are refused until a test starts a process on the port.

Structured output (`response_format`) and tool calls (`tools`, `tool_choice`) follow vLLM's shapes,
finish reasons and refusals (see `structured`); `POST /tokenize` counts with the same words-as-tokens
rule that prompt usage uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from genai_vllmsim import structured, text
from genai_vllmsim.config import ERROR_FORMATS, ERROR_KINDS, SimConfig
from genai_vllmsim.prefix_cache import PrefixCache, cache_tokens
from genai_vllmsim.slots import Slots
from genai_vllmsim.stats import Stats

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"
# A simulated reset closes the connection after this many content chunks.
RESET_AFTER_CHUNKS = 2
# Without latency, yield to the loop this often so that one long answer cannot starve the others.
YIELD_EVERY = 16
ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
}
ERROR_MESSAGES = {
    "400": "Simulated bad request (x-sim-error or --error-kind).",
    "429": "Simulated overload: too many requests.",
    "500": "Simulated internal server error.",
}
logger = logging.getLogger("genai_vllmsim")

# The exit status of a process ended by the kill switch: a shell's status for a SIGKILLed one (128 + 9).
KILLED_EXIT_CODE = 137

# uvicorn logs this when a response is abandoned, which is exactly how a reset is simulated.
ABANDONED_RESPONSE_LOG = "ASGI callable returned without completing response."


def error_response(status: int, message: str, error_format: str, param: str | None = None) -> JSONResponse:
    err: dict[str, Any] = {"message": message, "type": ERROR_TYPES[status], "param": param, "code": status}
    body = {"error": err} if error_format == "nested" else {"object": "error", **err}
    return JSONResponse(body, status_code=status)


class Rejected(Exception):
    """A request the simulator refuses as vLLM would (400 or 404)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class Knobs:
    """The behaviour of one request: the flags, overridden by its x-sim-* headers."""

    ttft_s: float
    itl_s: float
    prefill_s_per_token: float
    output_tokens: int
    fault: str | None
    error_format: str


@dataclass(slots=True)
class ToolCallPlan:
    """The one function call an answer makes: its id, name and arguments cut into tokens."""

    id: str
    name: str
    arguments: list[str]
    # vLLM answers a named or required call with content "", an automatic one with null.
    content: str | None


@dataclass(slots=True)
class Job:
    """One accepted generation request, planned in full before it is queued."""

    chat: bool
    stream: bool
    include_usage: bool
    model: str
    prompt_tokens: int
    indices: list[int]
    finish_reason: str
    knobs: Knobs
    arrival: float
    # A structured answer's tokens, sent instead of the words of `indices`.
    tokens: list[str] | None = None
    tool_call: ToolCallPlan | None = None
    # The caller's X-Request-Id, echoed in the answer's headers as vLLM does.
    request_id: str = ""
    # The chained hashes of the prompt's full blocks, for the prefix cache.
    block_hashes: list[bytes] | None = None

    def headers(self, base: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [*base, (b"x-request-id", self.request_id.encode())] if self.request_id else base

    @property
    def output_tokens(self) -> int:
        if self.tool_call is not None:
            return len(self.tool_call.arguments)
        return len(self.tokens) if self.tokens is not None else len(self.indices)


class Simulator:
    """State shared by all requests: configuration, the concurrency slots, the prefix cache and the counters."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.slots = Slots(config.max_num_seqs)
        self.stats = Stats(config.model, self.slots)
        self.prefix_cache = PrefixCache(config.block_size, config.prefix_cache_blocks)
        # The kill switch: die once a response has sent this many tokens (None: disarmed).
        self.die_after: int | None = config.die_after_tokens
        self.created = int(time.time())
        self._rng = random.Random(config.seed)  # noqa: S311 - fault dice, not cryptography
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count()
        self._expected_auth = f"Bearer {config.api_key}".encode() if config.api_key else None

    def die(self, why: str) -> NoReturn:
        """End the process abruptly, as a crashed replica does."""
        logger.warning("Killed by the kill switch", extra={"why": why})
        os._exit(KILLED_EXIT_CODE)

    def next_id(self, kind: str) -> str:
        return f"{kind}-{self._id_prefix}{next(self._ids):x}"

    def unauthorized(self, request: Request) -> Response | None:
        if self._expected_auth is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, self._expected_auth):
            return None
        self.stats.rejected += 1
        return JSONResponse({"error": "Unauthorized"}, status_code=401)

    def knobs(self, scope: Scope) -> Knobs:
        cfg = self.config
        ttft_ms, itl_ms, output_tokens = cfg.ttft_ms, cfg.itl_ms, cfg.output_tokens
        prefill_ms = cfg.prefill_ms_per_1k_tokens
        fault: str | None = None
        fault_given = False
        error_format = cfg.error_format
        for key, raw in scope["headers"]:
            if not key.startswith(b"x-sim-"):
                continue
            name, value = key[6:], raw.decode("latin-1").strip()
            try:
                if name == b"ttft-ms":
                    ttft_ms = _non_negative(float(value))
                elif name == b"itl-ms":
                    itl_ms = _non_negative(float(value))
                elif name == b"prefill-ms-per-1k-tokens":
                    prefill_ms = _non_negative(float(value))
                elif name == b"output-tokens":
                    output_tokens = int(_non_negative(int(value)))
                elif name == b"error":
                    fault_given = True
                    fault = None if value in ("", "none") else _one_of(value, ERROR_KINDS)
                elif name == b"error-format":
                    error_format = _one_of(value, ERROR_FORMATS)
            except ValueError as exc:
                raise Rejected(400, f"invalid header x-sim-{name.decode()}: {exc}") from exc
        if not fault_given and cfg.error_rate > 0 and self._rng.random() < cfg.error_rate:
            fault = cfg.error_kind
        return Knobs(
            ttft_ms / 1000.0, itl_ms / 1000.0, prefill_ms / 1_000_000.0, output_tokens, fault, error_format
        )

    def plan(self, body: Any, chat: bool, knobs: Knobs, arrival: float) -> Job:
        """Validate like vLLM does (cheaply) and decide the whole output up front."""
        if not isinstance(body, dict):
            raise Rejected(400, "The request body must be a JSON object.")
        model = body.get("model") or self.config.model
        if not isinstance(model, str):
            raise Rejected(400, "model must be a string.", "model")
        if model != self.config.model:
            raise Rejected(404, f"The model `{model}` does not exist.", "model")
        if chat:
            prompt = body.get("messages")
            if not isinstance(prompt, list) or not prompt:
                raise Rejected(400, "messages must be a non-empty list.", "messages")
            for message in prompt:
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise Rejected(400, "Each message must be an object with a string role.", "messages")
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str | list):
                raise Rejected(400, "prompt must be a string or a list.", "prompt")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise Rejected(400, "stream must be a boolean.", "stream")
        options = body.get("stream_options")
        if options is not None:
            if not stream:
                raise Rejected(
                    400, "Stream options can only be defined when `stream=True`.", "stream_options"
                )
            if not isinstance(options, dict):
                raise Rejected(400, "stream_options must be an object.", "stream_options")
        max_tokens = body.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
            raise Rejected(400, "max_tokens must be an integer.", "max_tokens")
        if max_tokens is not None and max_tokens < 1:
            raise Rejected(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool) or value < 0
            ):
                raise Rejected(400, f"{name} must be a non-negative number.", name)
        stop = body.get("stop")
        if stop is None:
            stop_words: frozenset[str] = frozenset()
        elif isinstance(stop, str):
            stop_words = frozenset((stop.strip(),))
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stop_words = frozenset(s.strip() for s in stop)
        else:
            raise Rejected(400, "stop must be a string or a list of strings.", "stop")

        limit = self.config.max_model_len
        prompt_tokens = max(1, text.count_words(prompt))
        if prompt_tokens >= limit:
            raise Rejected(
                400,
                f"This model's maximum context length is {limit} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                "messages" if chat else "prompt",
            )
        if max_tokens is not None and prompt_tokens + max_tokens > limit:
            raise Rejected(
                400,
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                f"context length is {limit} tokens and your request has {prompt_tokens} input tokens "
                f"({max_tokens} > {limit} - {prompt_tokens}).",
                "max_tokens",
            )
        cap = limit - prompt_tokens if max_tokens is None else max_tokens
        seed = text.prompt_seed(prompt)
        try:
            schema = structured.response_schema(body.get("response_format"))
            # The completions API has no tools: vLLM ignores the fields there.
            tool = (
                structured.tool_choice(
                    body.get("tools"), body.get("tool_choice"), auto_enabled=self.config.auto_tool_choice
                )
                if chat
                else None
            )
        except structured.Refusal as exc:
            raise Rejected(400, str(exc), exc.param) from exc
        job = Job(
            chat=chat,
            stream=stream,
            include_usage=bool(options and options.get("include_usage")),
            model=model,
            prompt_tokens=prompt_tokens,
            indices=[],
            finish_reason="stop",
            knobs=knobs,
            arrival=arrival,
        )
        if self.config.prefix_caching:
            job.block_hashes = self.prefix_cache.block_hashes(cache_tokens(prompt, chat))
        # A model left to choose answers a tool's result in words rather than calling again.
        if tool is not None and not (tool.mode == "auto" and prompt[-1].get("role") == "tool"):
            arguments = structured.pieces(structured.dumps(structured.value_for(tool.parameters, seed)))
            content = None if tool.mode == "auto" else ""
            job.tool_call = ToolCallPlan(self.next_tool_call_id(), tool.name, arguments[:cap], content)
            # As in OpenAI's API, a named call ends with "stop", an automatic or required one with "tool_calls".
            job.finish_reason = (
                "length" if cap < len(arguments) else "stop" if tool.mode == "named" else "tool_calls"
            )
        elif schema is not None:
            # Guided decoding writes the whole JSON value; only max_tokens or the context cuts it short.
            tokens = structured.pieces(structured.dumps(structured.value_for(schema, seed)))
            job.tokens = tokens[:cap]
            job.finish_reason = "length" if cap < len(tokens) else "stop"
        else:
            count = min(knobs.output_tokens, cap)
            job.indices, stopped = text.plan(seed, count, stop_words)
            job.finish_reason = "length" if not stopped and count < knobs.output_tokens else "stop"
        return job

    def prefill_s(self, job: Job) -> float:
        """Count a scheduled request's prefix-cache lookup; its prefill time, for the tokens not cached."""
        cached = 0
        if job.block_hashes is not None:
            cached = self.prefix_cache.lookup(job.block_hashes, job.prompt_tokens)
            self.stats.prefix_queries += job.prompt_tokens
            self.stats.prefix_hits += cached
        return (job.prompt_tokens - cached) * job.knobs.prefill_s_per_token

    def prefilled(self, job: Job) -> None:
        """The prompt's blocks are computed: later requests sharing them skip their prefill."""
        if job.block_hashes:
            self.prefix_cache.insert(job.block_hashes)

    def next_tool_call_id(self) -> str:
        return f"chatcmpl-tool-{self._id_prefix}{next(self._ids):x}"

    async def generate(self, request: Request, chat: bool) -> Response:
        arrival = asyncio.get_running_loop().time()
        denied = self.unauthorized(request)
        if denied is not None:
            return denied
        error_format = self.config.error_format
        try:
            knobs = self.knobs(request.scope)
            error_format = knobs.error_format
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                raise Rejected(400, f"Invalid JSON body: {exc}") from exc
            self.stats.last_requests.append(body)
            job = self.plan(body, chat, knobs, arrival)
        except Rejected as exc:
            self.stats.rejected += 1
            return error_response(exc.status, exc.message, error_format, exc.param)
        self.stats.started += 1
        job.request_id = request.headers.get("x-request-id", "")
        self.stats.last_request_ids.append(job.request_id)
        # vLLM logs each request it takes, under the id the caller sent in X-Request-Id.
        logger.info(
            "Received request", extra={"request_id": job.request_id, "prompt_tokens": job.prompt_tokens}
        )
        if knobs.fault in ERROR_MESSAGES:
            self.stats.errors += 1
            return error_response(int(knobs.fault), ERROR_MESSAGES[knobs.fault], error_format)
        return Generation(self, job)

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize: a completion `prompt` or chat `messages`, counted as prompts are counted."""
        error_format = self.config.error_format
        try:
            try:
                body = json.loads(await request.body())
            except ValueError as exc:
                raise Rejected(400, f"Invalid JSON body: {exc}") from exc
            if not isinstance(body, dict):
                raise Rejected(400, "The request body must be a JSON object.")
            model = body.get("model") or self.config.model
            if model != self.config.model:
                raise Rejected(404, f"The model `{model}` does not exist.", "model")
            if "messages" in body:
                value = body["messages"]
                if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
                    raise Rejected(400, "messages must be a list of objects.", "messages")
            else:
                value = body.get("prompt")
                if not isinstance(value, str):
                    raise Rejected(400, "prompt must be a string.", "prompt")
        except Rejected as exc:
            self.stats.rejected += 1
            return error_response(exc.status, exc.message, error_format, exc.param)
        words = text.words(value)
        return JSONResponse(
            {
                "count": len(words),
                "max_model_len": self.config.max_model_len,
                "tokens": [text.token_id(w) for w in words],
                "token_strs": words if body.get("return_token_strs") else None,
            }
        )


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _one_of(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}")
    return value


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class Generation(Response):
    """The answer to one accepted request: waits for a slot, then streams or sends the whole output.

    It runs beside a watcher of the client connection, as vLLM's `with_cancellation` does: when the
    client goes away, the generation (queued or running) is cancelled and its slot freed.
    """

    def __init__(self, sim: Simulator, job: Job) -> None:
        super().__init__()
        self.sim = sim
        self.job = job
        self._held = False

    def _free(self) -> None:
        """Give the slot back: once the last token is made, before it is sent, as vLLM's engine frees a
        sequence before its server sends the last chunk; so that a client that starts its next request on
        reading the end never finds this one still counted as running."""
        if self._held:
            self._held = False
            self.sim.slots.release()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer
        if not producer.cancelled():
            producer.result()

    async def _produce(self, send: Send) -> None:
        sim, job = self.sim, self.job
        try:
            if job.stream:
                # vLLM answers 200 before scheduling: queueing shows up as time to first token.
                await send(
                    {"type": "http.response.start", "status": 200, "headers": job.headers(SSE_HEADERS)}
                )
            await sim.slots.acquire()
            self._held = True
            if sim.die_after == 0:
                sim.die("a request was scheduled")
            sim.stats.prompt_tokens += job.prompt_tokens
            start = asyncio.get_running_loop().time()
            first_at = start + job.knobs.ttft_s + sim.prefill_s(job)
            if job.stream:
                await self._stream(send, first_at)
            else:
                await self._whole(send, first_at)
        except asyncio.CancelledError:
            sim.stats.cancelled += 1
            raise
        finally:
            self._free()

    def _finished(self, loop: asyncio.AbstractEventLoop) -> None:
        stats = self.sim.stats
        stats.finished += 1
        stats.success_by_reason[self.job.finish_reason] += 1
        stats.e2e.observe(loop.time() - self.job.arrival)

    async def _stream(self, send: Send, first_at: float) -> None:
        sim, job = self.sim, self.job
        stats = sim.stats
        loop = asyncio.get_running_loop()
        created = int(time.time())
        rid = sim.next_id("chatcmpl" if job.chat else "cmpl")
        obj = "chat.completion.chunk" if job.chat else "text_completion"
        head = f'data: {{"id":"{rid}","object":"{obj}","created":{created},"model":{json.dumps(job.model)},'
        if job.chat:
            prefix = head + '"choices":[{"index":0,"delta":{"content":'
            more = '},"logprobs":null,"finish_reason":null}]}\n\n'
            last = f'}},"logprobs":null,"finish_reason":"{job.finish_reason}","stop_reason":null}}]}}\n\n'
        else:
            prefix = head + '"choices":[{"index":0,"text":'
            more = ',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            last = f',"logprobs":null,"finish_reason":"{job.finish_reason}","stop_reason":null}}]}}\n\n'

        tool_call = job.tool_call
        tokens = None if job.tokens is None else [json.dumps(t, ensure_ascii=False) for t in job.tokens]
        if tool_call is not None:
            # Pieces of the call in delta.tool_calls: the first with its id, type and name, then the arguments.
            prefix = head + '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":'
            more = '}}]},"logprobs":null,"finish_reason":null}]}\n\n'
            last = (
                f'}}}}]}},"logprobs":null,"finish_reason":"{job.finish_reason}","stop_reason":null}}]}}\n\n'
            )
        knobs = job.knobs
        count = job.output_tokens
        reset_at = min(RESET_AFTER_CHUNKS, count) if knobs.fault == "reset" else -1
        await _sleep_until(loop, first_at)
        sim.prefilled(job)
        stats.ttft.observe(loop.time() - job.arrival)
        sent_at = loop.time()
        if job.chat:
            role = head + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            role += '"finish_reason":null}]}\n\n'
            await send({"type": "http.response.body", "body": role.encode(), "more_body": True})
        if tool_call is not None:
            call = {"index": 0, "id": tool_call.id, "type": "function"}
            call["function"] = {"name": tool_call.name, "arguments": ""}
            opening = head + '"choices":[{"index":0,"delta":{"tool_calls":[' + json.dumps(call) + "]},"
            opening += '"logprobs":null,"finish_reason":null}]}\n\n'
            await send({"type": "http.response.body", "body": opening.encode(), "more_body": True})
            tokens = [json.dumps(a, ensure_ascii=False) for a in tool_call.arguments]
        for i in range(count):
            if i:
                delay = first_at + i * knobs.itl_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            if i == reset_at:
                break
            if i:
                stats.itl.observe(loop.time() - sent_at)
            sent_at = loop.time()
            if tokens is not None:
                word = tokens[i]
            else:
                idx = job.indices[i]
                word = text.FIRST_JSON[idx] if i == 0 else text.NEXT_JSON[idx]
            chunk = prefix + word + (last if i == count - 1 else more)
            if i == count - 1:
                self._free()
            await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            stats.generation_tokens += 1
            if sim.die_after is not None and i >= sim.die_after - 1:
                sim.die(f"a stream sent {i + 1} tokens")
        if reset_at >= 0:
            # Returning without ending the body makes uvicorn drop the connection mid-stream.
            stats.errors += 1
            return
        if count == 0:
            self._free()
            await send(
                {"type": "http.response.body", "body": (prefix + '""' + last).encode(), "more_body": True}
            )
        if job.include_usage and sim.config.stream_usage:
            p = job.prompt_tokens
            usage = f'"choices":[],"usage":{{"prompt_tokens":{p},"total_tokens":{p + count},"completion_tokens":{count}}}}}\n\n'
            await send({"type": "http.response.body", "body": (head + usage).encode(), "more_body": True})
        await send({"type": "http.response.body", "body": DONE, "more_body": False})
        self._finished(loop)

    async def _whole(self, send: Send, first_at: float) -> None:
        sim, job = self.sim, self.job
        loop = asyncio.get_running_loop()
        knobs = job.knobs
        count = job.output_tokens
        await _sleep_until(loop, first_at)
        sim.prefilled(job)
        die_after = sim.die_after
        if die_after is not None and count >= die_after:
            # Generating its die_after-th token kills the process before the answer is sent.
            await _sleep_until(loop, first_at + max(die_after - 1, 0) * knobs.itl_s)
            sim.die(f"an answer reached {die_after} tokens")
        await _sleep_until(loop, first_at + max(count - 1, 0) * knobs.itl_s)
        sim.stats.ttft.observe(first_at - job.arrival)
        if count > 1:
            sim.stats.itl.observe(knobs.itl_s, count - 1)
        if knobs.fault == "reset":
            # Headers, then the connection drops before any body: the client sees a broken response.
            sim.stats.errors += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            return
        tool_call = job.tool_call
        calls: list[dict[str, Any]] = []
        content: str | None
        if tool_call is not None:
            content = tool_call.content
            function = {"name": tool_call.name, "arguments": "".join(tool_call.arguments)}
            calls.append({"id": tool_call.id, "type": "function", "function": function})
        elif job.tokens is not None:
            content = "".join(job.tokens)
        else:
            content = text.join(job.indices)
        choice: dict[str, Any]
        if job.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content, "tool_calls": calls}}
        else:
            choice = {"index": 0, "text": content}
        choice.update(logprobs=None, finish_reason=job.finish_reason, stop_reason=None)
        p = job.prompt_tokens
        body = {
            "id": sim.next_id("chatcmpl" if job.chat else "cmpl"),
            "object": "chat.completion" if job.chat else "text_completion",
            "created": int(time.time()),
            "model": job.model,
            "choices": [choice],
            "usage": {"prompt_tokens": p, "total_tokens": p + count, "completion_tokens": count},
        }
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = job.headers(
            [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        )
        self._free()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        sim.stats.generation_tokens += count
        self._finished(loop)


def create_app(config: SimConfig) -> FastAPI:
    sim = Simulator(config)
    app = FastAPI(title="genai vLLM simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = sim
    registry = CollectorRegistry(auto_describe=False)
    registry.register(sim.stats)

    async def chat_completions(request: Request) -> Response:
        return await sim.generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await sim.generate(request, chat=False)

    # Plain Starlette routes: the hot path skips FastAPI's per-request dependency solving.
    app.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    if config.tokenize:
        # At the root, as in vLLM, and like vLLM outside the API key's reach (it guards /v1 only).
        app.add_route("/tokenize", sim.tokenize, methods=["POST"])

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        denied = sim.unauthorized(request)
        if denied is not None:
            return denied
        card = {
            "id": config.model,
            "object": "model",
            "created": sim.created,
            "owned_by": "vllm",
            "root": config.model,
            "parent": None,
            "max_model_len": config.max_model_len,
            "permission": [],
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/sim/stats")
    async def sim_stats() -> Response:
        return JSONResponse(sim.stats.as_json())

    @app.post("/sim/reset")
    async def sim_reset() -> Response:
        sim.stats.reset()
        sim.prefix_cache.clear()
        sim.die_after = config.die_after_tokens
        return JSONResponse(sim.stats.as_json())

    @app.post("/sim/kill")
    async def sim_kill(request: Request) -> Response:
        raw = request.query_params.get("after_tokens")
        if raw is None:
            # After this answer has been written out: the caller learns that the kill was taken.
            return JSONResponse({"after_tokens": None}, background=BackgroundTask(sim.die, "POST /sim/kill"))
        try:
            after = int(raw)
            if after < 0:
                raise ValueError("must not be negative")
        except ValueError as exc:
            return error_response(400, f"invalid after_tokens: {exc}", "nested", "after_tokens")
        sim.die_after = after
        return JSONResponse({"after_tokens": after})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        # vLLM's (in its development mode): forget every cached block, keep the counters.
        sim.prefix_cache.clear()
        return Response(status_code=200)

    return app
