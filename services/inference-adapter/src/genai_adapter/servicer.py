"""genai.inference.v1.InferenceService: gRPC calls turned into OpenAI-compatible HTTP requests.

Structured output and tools: response_format_json, tools_json and tool_choice_json are parsed (bad JSON
is INVALID_ARGUMENT) and sent as the body's response_format, tools and tool_choice; whether the server
supports them is the server's to say (a 400 from it is INVALID_ARGUMENT with its message). Tool calls
come back in GenerateResponse.tool_calls, or in a stream as pieces in GenerateChunk.tool_calls (see
`ToolCallPiece`), exactly as the server sent them: the adapter neither joins nor checks arguments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NoReturn

import grpc
from genai.inference.v1 import inference_pb2, inference_pb2_grpc
from prometheus_client import Counter, Histogram

from genai_adapter.replicas import ReplicaSet
from genai_adapter.scheduler import FairScheduler, QueueFull, QueueTimeout
from genai_adapter.shared_queue import SharedScheduler
from genai_adapter.upstream import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    BadUpstreamResponse,
    ToolCallPiece,
    UpstreamError,
    map_error,
    read_tool_calls,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = "genai.inference.v1.InferenceService"
# Trailing metadata of RESOURCE_EXHAUSTED from the queue: whole seconds to wait before trying again.
RETRY_AFTER_KEY = "retry-after"

UPSTREAM_CALLS = Counter(
    "genai_adapter_upstream_calls_total", "Calls to the model server by outcome", ["method", "outcome"]
)
for _method in ("Generate", "GenerateStream"):
    UPSTREAM_CALLS.labels(_method, "OK")
    UPSTREAM_CALLS.labels(_method, "CANCELLED")
# The series every generation touches, looked up once rather than with labels() (a lock and a dict) each time.
GENERATE_OK = UPSTREAM_CALLS.labels("Generate", "OK")
STREAM_OK = UPSTREAM_CALLS.labels("GenerateStream", "OK")
# Queue wait included: what the caller waits for, which is what users feel.
FIRST_TOKEN_SECONDS = Histogram(
    "genai_adapter_time_to_first_token_seconds",
    "Time from a GenerateStream call to its first text from the model server",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INTER_TOKEN_SECONDS = Histogram(
    "genai_adapter_inter_token_seconds",
    "Gap between two pieces of text of a streamed generation",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5),
)
GENERATION_SECONDS = Histogram(
    "genai_adapter_generation_seconds",
    "Whole generation, from the call to the last token (queue wait included), by method",
    ["method"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)
GENERATE_SECONDS = GENERATION_SECONDS.labels("Generate")
STREAM_SECONDS = GENERATION_SECONDS.labels("GenerateStream")
PROMPT_TOKENS = Counter(
    "genai_adapter_prompt_tokens_total", "Prompt tokens of finished generations (the model's count)"
)
COMPLETION_TOKENS = Counter(
    "genai_adapter_completion_tokens_total", "Generated tokens of finished generations (the model's count)"
)
COMPLETION_TOKENS_PER_REQUEST = Histogram(
    "genai_adapter_completion_tokens_per_request",
    "Generated tokens per finished generation",
    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096),
)
# The caller went away (client disconnected, deadline): the upstream request is closed, freeing the GPU.
CANCELLED = Counter(
    "genai_adapter_cancelled_total",
    "Generations whose caller went away, by stage: queued (before a slot) or generating",
    ["stage"],
)
for _stage in ("queued", "generating"):
    CANCELLED.labels(_stage)


def _count_tokens(usage: inference_pb2.Usage) -> None:
    PROMPT_TOKENS.inc(usage.prompt_tokens)
    COMPLETION_TOKENS.inc(usage.completion_tokens)
    COMPLETION_TOKENS_PER_REQUEST.observe(usage.completion_tokens)


# Body fields that only the adapter sets: a caller's extra_json cannot replace them.
_RESERVED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "response_format",
        "tools",
        "tool_choice",
    }
)
# Texts one CountTokens call may count (each is one request to the model server).
MAX_COUNT_TEXTS = 1024
# Tokens a chat template adds around each message, counted on top of its text (as the gateway does).
MESSAGE_OVERHEAD_TOKENS = 8
# Counting a finished stream's tokens when the server sent no usage: at most this long.
COUNT_AFTER_STREAM_S = 5.0
# A streamed answer's chunks are kept joined this many at a time (see `_Transcript`).
TRANSCRIPT_BLOCK = 64


class _Transcript:
    """A streamed answer's text so far and the number of chunks that carried it, kept to count its tokens
    when the server sends no usage (llama.cpp's). Joined TRANSCRIPT_BLOCK chunks at a time: a str per chunk
    costs about 60 bytes besides its few characters, which for a thousand long answers at once was tens
    of MiB; joining only the newest chunks keeps the copying linear in the answer's length."""

    __slots__ = ("_parts", "_joined", "chunks")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._joined = 0  # _parts[:_joined] are blocks already joined, the rest single chunks
        self.chunks = 0

    def add(self, text: str) -> None:
        self.chunks += 1
        self._parts.append(text)
        if len(self._parts) - self._joined >= TRANSCRIPT_BLOCK:
            self._parts[self._joined :] = ["".join(self._parts[self._joined :])]
            self._joined += 1

    def text(self) -> str:
        return "".join(self._parts)


def _sampling_value(value: float) -> float:
    # Proto floats are 32-bit: 0.7 would go upstream as 0.699999988079071.
    return float(f"{value:.6g}")


def _openai_message(message: inference_pb2.ChatMessage) -> dict[str, Any]:
    """A chat turn in OpenAI's shape, with the tool calls it made or the call it answers."""
    turn: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type or "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        turn["tool_call_id"] = message.tool_call_id
    return turn


def _tool_calls(pieces: list[ToolCallPiece]) -> list[inference_pb2.ToolCall]:
    return [
        inference_pb2.ToolCall(index=p.index, id=p.id, type=p.type, name=p.name, arguments=p.arguments)
        for p in pieces
    ]


def _caller_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's gRPC deadline in event-loop time, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _usage(raw: Any) -> inference_pb2.Usage:
    if not isinstance(raw, dict):
        return inference_pb2.Usage()

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return inference_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=count("total_tokens") or prompt + completion,
    )


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Generates text and lists models on the model servers; every upstream failure becomes a clear status.

    A request without a model uses GENAI_ADAPTER_MODEL, or else the first model the upstream lists
    (asked once, and again after the upstream says that model no longer exists). Generations take
    a slot from the scheduler first (validation happens before, so that a bad request never
    waits); listing models does not. Which replica serves an admitted generation is the replica
    set's choice (`ReplicaSet`), by load and the request's affinity_key.
    """

    def __init__(
        self, upstream: ReplicaSet, scheduler: FairScheduler | SharedScheduler, default_model: str = ""
    ) -> None:
        self._upstream = upstream
        self._scheduler = scheduler
        self._configured_model = default_model
        self._resolved_model = ""
        self._resolve_lock = asyncio.Lock()

    async def _model(self, requested: str, context: grpc.aio.ServicerContext) -> str:
        if requested:
            return requested
        if self._configured_model:
            return self._configured_model
        if not self._resolved_model:
            async with self._resolve_lock:
                if not self._resolved_model:
                    try:
                        models = await self._upstream.list_models(context.time_remaining())
                    except UpstreamError as exc:
                        await self._abort(context, "ListModels", exc)
                    if not models:
                        await self._abort(
                            context,
                            "ListModels",
                            UpstreamError(grpc.StatusCode.UNAVAILABLE, "the model server lists no models"),
                        )
                    self._resolved_model = models[0]["id"]
                    logger.info("default model from the upstream: %s", self._resolved_model)
        return self._resolved_model

    async def _payload(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext, *, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        """The upstream path and JSON body for a request."""
        if not request.messages and not request.prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "messages or prompt must be given")
        if request.messages and request.prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give messages or prompt, not both")
        if request.max_tokens < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must not be negative")
        payload: dict[str, Any] = {}
        if request.extra_json:
            try:
                extra = json.loads(request.extra_json)
            except ValueError:
                extra = None
            if not isinstance(extra, dict):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "extra_json must be a JSON object")
            # The fields below are the adapter's to set; extra ones never override them.
            payload.update({k: v for k, v in extra.items() if k not in _RESERVED_FIELDS})
        structured = {
            "response_format": (request.response_format_json, dict, "a JSON object"),
            "tools": (request.tools_json, list, "a JSON array"),
            "tool_choice": (request.tool_choice_json, str | dict, "a JSON string or object"),
        }
        for name, (raw, kind, described) in structured.items():
            if not raw:
                continue
            try:
                value = json.loads(raw)
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}_json is not valid JSON: {exc}")
            if not isinstance(value, kind):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}_json must be {described}")
            payload[name] = value
        if request.prompt and ("tools" in payload or "tool_choice" in payload):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tools need messages, not a prompt")
        payload["model"] = await self._model(request.model, context)
        if request.prompt:
            path = COMPLETIONS_PATH
            payload["prompt"] = request.prompt
        else:
            path = CHAT_PATH
            payload["messages"] = [_openai_message(m) for m in request.messages]
        if request.user:
            payload["user"] = request.user
        # Only what the caller set: the upstream's own defaults (e.g. the model's generation config) apply otherwise.
        if request.max_tokens:
            payload["max_tokens"] = request.max_tokens
        if request.HasField("temperature"):
            payload["temperature"] = _sampling_value(request.temperature)
        if request.HasField("top_p"):
            payload["top_p"] = _sampling_value(request.top_p)
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.HasField("seed"):
            payload["seed"] = request.seed
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return path, payload

    async def _abort(
        self, context: grpc.aio.ServicerContext, method: str, exc: UpstreamError, model: str = ""
    ) -> NoReturn:
        UPSTREAM_CALLS.labels(method, exc.code.name).inc()
        if exc.code == grpc.StatusCode.NOT_FOUND and model and model == self._resolved_model:
            # The upstream may have been restarted with another model: ask again next time.
            self._resolved_model = ""
        await context.abort(exc.code, exc.message)
        raise AssertionError("unreachable: abort raises")

    async def _queue_abort(
        self, context: grpc.aio.ServicerContext, exc: QueueFull | QueueTimeout
    ) -> NoReturn:
        """Answer a request that got no slot upstream.

        A full queue or the queue timeout is the service being busy: RESOURCE_EXHAUSTED with a
        retry-after, for the gateway to answer 503 + Retry-After. When the caller's own deadline
        ran out first, the caller chose to wait no longer: DEADLINE_EXCEEDED, as for any other call
        that outlives its deadline (and nothing to retry after).
        """
        if isinstance(exc, QueueFull):
            # info, not warning: under overload this is every request, and the metric counts them.
            logger.info("queue full: %s requests waiting", exc.waiting)
            message = f"the model is busy: {exc.waiting} requests are waiting; try again shortly"
        elif exc.by_caller:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "waited too long for the model")
        else:
            logger.info("a request left the queue after %s s without a slot", self._scheduler.queue_timeout_s)
            message = "waited too long for the model"
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            message,
            trailing_metadata=((RETRY_AFTER_KEY, str(exc.retry_after_s)),),
        )
        raise AssertionError("unreachable: abort raises")

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        path, payload = await self._payload(request, context, stream=False)
        started = time.perf_counter()
        admitted = False
        try:
            async with self._scheduler.slot(request.user, _caller_deadline(context)):
                admitted = True
                answer = await self._generate(path, payload, request.affinity_key, context)
        except (QueueFull, QueueTimeout) as exc:
            await self._queue_abort(context, exc)
        except asyncio.CancelledError:
            CANCELLED.labels("generating" if admitted else "queued").inc()
            raise
        GENERATE_SECONDS.observe(time.perf_counter() - started)
        _count_tokens(answer.usage)
        return answer

    async def _generate(
        self, path: str, payload: dict[str, Any], key: str, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        try:
            answer = await self._upstream.complete(path, payload, context.time_remaining(), key)
            choices = answer.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                raise map_error(BadUpstreamResponse("no choices in the answer"))
            choice = choices[0]
            calls: list[ToolCallPiece] = []
            if path == CHAT_PATH:
                message = choice.get("message")
                text = message.get("content") if isinstance(message, dict) else None
                if isinstance(message, dict):
                    try:
                        calls = read_tool_calls(message.get("tool_calls"), streamed=False)
                    except BadUpstreamResponse as exc:
                        raise map_error(exc) from exc
            else:
                text = choice.get("text")
        except UpstreamError as exc:
            await self._abort(context, "Generate", exc, payload["model"])
        except asyncio.CancelledError:
            UPSTREAM_CALLS.labels("Generate", "CANCELLED").inc()
            raise
        GENERATE_OK.inc()
        return inference_pb2.GenerateResponse(
            text=text if isinstance(text, str) else "",
            model=str(answer.get("model") or payload["model"]),
            finish_reason=str(choice.get("finish_reason") or ""),
            usage=_usage(answer.get("usage")),
            tool_calls=_tool_calls(calls),
        )

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        path, payload = await self._payload(request, context, stream=True)
        started = time.perf_counter()
        stage = "queued"
        try:
            async with self._scheduler.slot(request.user, _caller_deadline(context), wait=False) as ticket:
                # Chunks with only the place in the queue until the turn comes (none if a slot was free).
                async with aclosing(ticket.positions()) as positions:
                    async for position in positions:
                        yield inference_pb2.GenerateChunk(queue_position=position)
                stage = "generating"
                chunks = self._generate_stream(path, payload, request.affinity_key, context, started)
                async with aclosing(chunks):
                    async for chunk in chunks:
                        yield chunk
        except (QueueFull, QueueTimeout) as exc:
            await self._queue_abort(context, exc)
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: the caller stopped reading and grpc closed this generator.
            CANCELLED.labels(stage).inc()
            raise

    async def _generate_stream(
        self,
        path: str,
        payload: dict[str, Any],
        key: str,
        context: grpc.aio.ServicerContext,
        started: float,
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        first = True
        last_at = 0.0
        generated = _Transcript()
        try:
            # aclosing: when this call ends early (caller cancelled), the HTTP stream is closed now.
            events = self._upstream.stream(path, payload, context.time_remaining(), key)
            async with aclosing(events):
                async for event in events:
                    if event.last:
                        STREAM_OK.inc()
                        usage = _usage(event.usage)
                        if not usage.completion_tokens and generated.chunks:
                            usage = await self._counted_usage(payload, generated, context)
                        STREAM_SECONDS.observe(time.perf_counter() - started)
                        _count_tokens(usage)
                        yield inference_pb2.GenerateChunk(
                            model=event.model, finish_reason=event.finish_reason, usage=usage
                        )
                    else:
                        now = time.perf_counter()
                        if first:
                            FIRST_TOKEN_SECONDS.observe(now - started)
                            first = False
                        else:
                            INTER_TOKEN_SECONDS.observe(now - last_at)
                        last_at = now
                        generated.add(event.text + "".join(c.arguments for c in event.tool_calls))
                        yield inference_pb2.GenerateChunk(
                            text=event.text, model=event.model, tool_calls=_tool_calls(event.tool_calls)
                        )
        except UpstreamError as exc:
            await self._abort(context, "GenerateStream", exc, payload["model"])
        except asyncio.CancelledError:
            UPSTREAM_CALLS.labels("GenerateStream", "CANCELLED").inc()
            raise

    async def _counted_usage(
        self, payload: dict[str, Any], generated: _Transcript, context: grpc.aio.ServicerContext
    ) -> inference_pb2.Usage:
        """What a stream that carried no usage spent (llama.cpp's server ignores `stream_options`), counted by
        the server's own tokenizer, so that quotas and usage reports see streamed answers too.

        The prompt is counted as its texts plus a chat template's few tokens per message. If counting
        fails, each streamed chunk counts as one token (servers send one token per chunk) and the prompt
        as nothing: an undercount, never a refusal of an answer already given.
        """
        if "messages" in payload:
            texts = [str(m.get("content") or "") for m in payload["messages"]]
            overhead = MESSAGE_OVERHEAD_TOKENS * len(texts)
        else:
            texts, overhead = [str(payload.get("prompt") or "")], 0
        try:
            counted = await self._upstream.count_tokens(
                payload["model"],
                [*texts, generated.text()],
                min(COUNT_AFTER_STREAM_S, context.time_remaining() or COUNT_AFTER_STREAM_S),
            )
        except UpstreamError as exc:
            logger.warning("a streamed answer's tokens could not be counted: %s", exc.message)
            return inference_pb2.Usage(completion_tokens=generated.chunks, total_tokens=generated.chunks)
        prompt = sum(counted.counts[:-1]) + overhead
        completion = counted.counts[-1]
        return inference_pb2.Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        try:
            models = await self._upstream.list_models(context.time_remaining())
        except UpstreamError as exc:
            await self._abort(context, "ListModels", exc)
        UPSTREAM_CALLS.labels("ListModels", "OK").inc()
        return inference_pb2.ListModelsResponse(
            models=[
                inference_pb2.Model(
                    id=m["id"],
                    owned_by=str(m.get("owned_by") or ""),
                    created=m["created"] if isinstance(m.get("created"), int) else 0,
                    max_model_len=m["max_model_len"] if isinstance(m.get("max_model_len"), int) else 0,
                )
                for m in models
            ]
        )

    async def CountTokens(
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        """Each text's token count by the upstream's tokenizer, and the model's context length if known.

        Texts are counted as plain text (no chat template, no special tokens where the server lets
        the caller say so). Not queued behind generations: tokenizing costs the server no GPU time.
        """
        if len(request.texts) > MAX_COUNT_TEXTS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_COUNT_TEXTS} texts can be counted at once"
            )
        model = await self._model(request.model, context)
        try:
            counted = await self._upstream.count_tokens(model, list(request.texts), context.time_remaining())
        except UpstreamError as exc:
            await self._abort(context, "CountTokens", exc, model)
        UPSTREAM_CALLS.labels("CountTokens", "OK").inc()
        return inference_pb2.CountTokensResponse(counts=counted.counts, max_model_len=counted.max_model_len)
