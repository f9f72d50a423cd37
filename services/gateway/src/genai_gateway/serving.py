"""What the gateway does once a caller is known and admitted: model, context, cache, generation, history.

One request type serves POST /ask, the OpenAI-compatible endpoints and the public gRPC API, so that all of
them get the same caching, context and history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from genai.auth.v1 import auth_pb2
from genai.history.v1 import history_pb2
from genai.inference.v1 import inference_pb2
from prometheus_client import Counter

from genai_common.grpc_client import call_metadata
from genai_common.request_id import current_request_id
from genai_gateway.backends import Backends
from genai_gateway.cache import AnswerCache, CachedAnswer, cache_key
from genai_gateway.errors import ApiError, from_grpc
from genai_gateway.settings import GatewaySettings
from genai_gateway.spool import HistoryRecorder

logger = logging.getLogger(__name__)

MODEL_SERVICE = "the model service"
HISTORY_SERVICE = "the history service"
# Finish reasons of a whole answer; anything else (cut off by an error or a cancel) is not cached.
COMPLETE = ("stop", "length", "")
# A cached answer is streamed in pieces of about this many characters.
CACHED_CHUNK_CHARS = 16


@dataclass
class Generation:
    """One request for text, whichever API it came through."""

    # Chat messages, or a plain prompt (/v1/completions); exactly one is set.
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    model: str = ""
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # vLLM's further sampling fields (top_k, repetition_penalty, ...), already checked by the caller.
    extra: dict[str, Any] = field(default_factory=dict)
    conversation_id: str = ""
    # Skip reading the cache (a "regenerate"); the new answer is still stored.
    no_cache: bool = False

    def user_text(self) -> str:
        """What the user wrote, as history records it: the prompt, or the last user message."""
        if self.prompt is not None:
            return self.prompt
        for message in reversed(self.messages or []):
            if message["role"] == "user":
                return message["content"]
        return (self.messages or [{"content": ""}])[-1]["content"]


@dataclass
class Answer:
    text: str
    source: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    conversation_id: str = ""
    latency_ms: int = 0
    # Shared from an identical request that was already being generated (single-flight).
    coalesced: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """A piece of a streamed answer."""

    text: str


@dataclass
class Queued:
    """The request waits for the model; 1 = next in line."""

    position: int


COALESCED = Counter("genai_gateway_coalesced_total", "Requests that shared an identical request's generation")


class Flight:
    """One generation, shared by every identical request that arrives while it runs (single-flight).

    The generation runs in a task of its own, not in any one request: it goes on while anybody follows
    it, and is cancelled (freeing the GPU) when the last follower leaves.
    """

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.position = 0
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def publish(self, text: str) -> None:
        self.position = 0
        self.pieces.append(text)
        self._notify()

    def queued(self, position: int) -> None:
        self.position = position
        self._notify()

    def finish(self, answer: Answer) -> None:
        self.answer = answer
        self._notify()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._notify()

    async def follow(self) -> AsyncIterator[Delta | Queued | Answer]:
        self.followers += 1
        seen, told = 0, 0
        try:
            while True:
                changed = self._changed
                if self.position and self.position != told and seen == 0:
                    told = self.position
                    yield Queued(self.position)
                while seen < len(self.pieces):
                    seen += 1
                    yield Delta(self.pieces[seen - 1])
                if self.error is not None:
                    raise self.error
                if self.answer is not None:
                    yield self.answer
                    return
                await changed.wait()
        finally:
            self.followers -= 1
            if self.followers == 0 and not self.done and self.task is not None:
                self.task.cancel()


class AskService:
    def __init__(
        self, settings: GatewaySettings, backends: Backends, cache: AnswerCache, recorder: HistoryRecorder
    ):
        self.settings = settings
        self.backends = backends
        self.cache = cache
        self.recorder = recorder
        self._models: list[inference_pb2.Model] = []
        self._models_at = 0.0
        self._models_lock = asyncio.Lock()
        self._flights: dict[str, Flight] = {}
        # History writes of streams whose client left: kept here so they finish and are not collected.
        self._background: set[asyncio.Task[Any]] = set()

    # --- input -------------------------------------------------------------------------------------

    def check_prompt(self, text: str, what: str = "prompt") -> None:
        if not text.strip():
            raise ApiError(422, f"{what} must not be empty")
        if len(text) > self.settings.max_prompt_chars:
            raise ApiError(
                413,
                f"{what} is too long: {len(text)} characters, the limit is {self.settings.max_prompt_chars}",
            )

    def check_max_tokens(self, max_tokens: int | None) -> int:
        if max_tokens is None:
            return self.settings.default_max_tokens
        if not 1 <= max_tokens <= self.settings.max_tokens_limit:
            raise ApiError(422, f"max_tokens must be between 1 and {self.settings.max_tokens_limit}")
        return max_tokens

    # --- models ------------------------------------------------------------------------------------

    @property
    def known_model(self) -> str:
        """The default model if already known, "" before the first look-up."""
        return self.settings.model or (self._models[0].id if self._models else "")

    async def models(self) -> list[inference_pb2.Model]:
        """The served models, looked up again after `models_refresh_s`."""
        if self._models and time.monotonic() - self._models_at < self.settings.models_refresh_s:
            return self._models
        async with self._models_lock:
            if not self._models or time.monotonic() - self._models_at >= self.settings.models_refresh_s:
                try:
                    listing = await self.backends.adapter.ListModels(
                        inference_pb2.ListModelsRequest(), timeout=10, metadata=call_metadata()
                    )
                except grpc.aio.AioRpcError as exc:
                    if not self._models:
                        raise from_grpc(exc, MODEL_SERVICE) from None
                    # A list we had is better than none while the adapter restarts.
                    logger.warning("model list not refreshed: %s", exc.code().name)
                else:
                    self._models = list(listing.models)
                    self._models_at = time.monotonic()
        if not self._models:
            raise ApiError(503, "the model server serves no model")
        return self._models

    async def resolve_model(self, requested: str) -> str:
        models = await self.models()
        if not requested:
            return self.settings.model or models[0].id
        if requested == self.settings.model or any(m.id == requested for m in models):
            return requested
        raise ApiError(404, f"The model `{requested}` does not exist.", code="model_not_found")

    # --- context -----------------------------------------------------------------------------------

    async def with_context(
        self, principal: auth_pb2.Principal, generation: Generation
    ) -> list[dict[str, str]]:
        """The messages to send: the request's, with earlier turns of its conversation before them."""
        messages = generation.messages or []
        if not generation.conversation_id:
            return messages
        try:
            conversation = await self.backends.history.GetConversation(
                history_pb2.GetConversationRequest(
                    owner_id=principal.user_id, conversation_id=generation.conversation_id
                ),
                timeout=self.settings.history_timeout_s,
                metadata=call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise ApiError(404, "conversation not found", code="conversation_not_found") from None
            raise from_grpc(exc, HISTORY_SERVICE) from None
        budget = self.settings.context_budget_chars
        turns: list[dict[str, str]] = []
        # Newest turns first until the budget is spent; a turn is kept whole or not at all.
        for message in reversed(conversation.messages):
            size = len(message.prompt) + len(message.response)
            if size > budget:
                break
            budget -= size
            turns[:0] = [
                {"role": "user", "content": message.prompt},
                {"role": "assistant", "content": message.response},
            ]
        system = [m for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        return system + turns + rest

    # --- generation --------------------------------------------------------------------------------

    def _request(
        self,
        principal: auth_pb2.Principal,
        generation: Generation,
        model: str,
        messages: list[dict[str, str]],
    ) -> inference_pb2.GenerateRequest:
        request = inference_pb2.GenerateRequest(
            model=model, max_tokens=generation.max_tokens, stop=generation.stop, user=principal.user_id
        )
        if generation.prompt is not None:
            request.prompt = generation.prompt
        else:
            request.messages.extend(inference_pb2.ChatMessage(**m) for m in messages)
        if generation.temperature is not None:
            request.temperature = generation.temperature
        if generation.top_p is not None:
            request.top_p = generation.top_p
        if generation.seed is not None:
            request.seed = generation.seed
        if generation.extra:
            request.extra_json = json.dumps(generation.extra)
        return request

    def _key(
        self,
        principal: auth_pb2.Principal,
        generation: Generation,
        model: str,
        messages: list[dict[str, str]],
    ) -> str:
        params: dict[str, Any] = {
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "stop": generation.stop,
            "seed": generation.seed,
            "extra": generation.extra,
        }
        if generation.prompt is not None:
            params["prompt"] = " ".join(generation.prompt.split())
        return cache_key(
            model,
            messages,
            params,
            case_insensitive=self.settings.cache_case_insensitive,
            scope=principal.user_id if self.settings.cache_scope == "user" else "",
        )

    async def _prepare(
        self, principal: auth_pb2.Principal, generation: Generation
    ) -> tuple[str, list[dict[str, str]], str, CachedAnswer | None]:
        model = await self.resolve_model(generation.model)
        messages = await self.with_context(principal, generation)
        key = self._key(principal, generation, model, messages)
        cached = None if generation.no_cache else await self.cache.get(key)
        return model, messages, key, cached

    def _flight(
        self,
        key: str,
        principal: auth_pb2.Principal,
        generation: Generation,
        model: str,
        messages: list[dict[str, str]],
        streaming: bool,
    ) -> Flight:
        """The generation for `key`: the one in progress if there is one, otherwise a new one."""
        flight = self._flights.get(key)
        if flight is not None and not flight.done:
            COALESCED.inc()
            return flight
        flight = Flight()
        self._flights[key] = flight
        request = self._request(principal, generation, model, messages)

        async def run() -> None:
            try:
                if streaming:
                    answer = await self._generate_stream(flight, request, model)
                else:
                    answer = await self._generate(flight, request, model)
                # Cached before the flight ends, so that no identical request slips in between the two.
                await self._store(key, answer)
                flight.finish(answer)
            except grpc.aio.AioRpcError as exc:
                flight.fail(from_grpc(exc, MODEL_SERVICE, busy_status=503))
            except asyncio.CancelledError:
                flight.fail(ApiError(503, "the generation was cancelled"))
                raise
            except Exception as exc:
                logger.exception("generation failed")
                flight.fail(ApiError(500, "internal error"))
                raise exc from None
            finally:
                if self._flights.get(key) is flight:
                    del self._flights[key]

        flight.task = asyncio.create_task(run())
        return flight

    async def _generate(self, flight: Flight, request: inference_pb2.GenerateRequest, model: str) -> Answer:
        reply = await self.backends.adapter.Generate(
            request, timeout=self.settings.generate_timeout_s, metadata=call_metadata()
        )
        if reply.text:
            flight.publish(reply.text)
        return Answer(
            text=reply.text,
            source="model",
            model=reply.model or model,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            finish_reason=reply.finish_reason,
        )

    async def _generate_stream(
        self, flight: Flight, request: inference_pb2.GenerateRequest, model: str
    ) -> Answer:
        answer = Answer(text="", source="model", model=model)
        call = self.backends.adapter.GenerateStream(
            request, timeout=self.settings.generate_timeout_s, metadata=call_metadata()
        )
        try:
            async for chunk in call:
                if chunk.queue_position:
                    flight.queued(chunk.queue_position)
                if chunk.text:
                    flight.publish(chunk.text)
                if chunk.finish_reason or chunk.usage.completion_tokens:
                    answer.finish_reason = chunk.finish_reason
                    answer.prompt_tokens = chunk.usage.prompt_tokens
                    answer.completion_tokens = chunk.usage.completion_tokens
                if chunk.model:
                    answer.model = chunk.model
        finally:
            # Ends the upstream generation too when this task is cancelled (nobody listens any more).
            call.cancel()
        answer.text = "".join(flight.pieces)
        return answer

    async def answer(self, principal: auth_pb2.Principal, generation: Generation) -> Answer:
        """The whole answer at once."""
        result: Answer | None = None
        async for item in self.stream(principal, generation, streaming=False):
            if isinstance(item, Answer):
                result = item
        assert result is not None
        return result

    async def stream(
        self, principal: auth_pb2.Principal, generation: Generation, *, streaming: bool = True
    ) -> AsyncIterator[Delta | Queued | Answer]:
        """The answer as it is generated: Queued and Delta events, then the whole Answer last.

        Identical requests in flight share one generation. If the consumer stops early (the client went
        away) and nobody else follows that generation, it is cancelled upstream; what was generated so far
        is still recorded in history.
        """
        started = time.perf_counter()
        model, messages, key, cached = await self._prepare(principal, generation)
        if cached is not None:
            answer = _from_cache(cached)
            for start in range(0, len(answer.text), CACHED_CHUNK_CHARS):
                yield Delta(answer.text[start : start + CACHED_CHUNK_CHARS])
            answer.latency_ms = int((time.perf_counter() - started) * 1000)
            answer.conversation_id = await self._record(principal, generation, answer)
            yield answer
            return

        existing = self._flights.get(key)
        coalesced = existing is not None and not existing.done
        flight = self._flight(key, principal, generation, model, messages, streaming)
        pieces: list[str] = []
        finished: Answer | None = None
        try:
            async for item in flight.follow():
                if isinstance(item, Delta):
                    pieces.append(item.text)
                    if streaming:
                        yield item
                elif isinstance(item, Queued):
                    if streaming:
                        yield item
                else:
                    finished = item
        finally:
            if finished is None and pieces:
                # The client left mid-answer: keep what the user wrote and what they were shown.
                partial = Answer(
                    text="".join(pieces),
                    source="model",
                    model=model,
                    finish_reason="cancelled",
                    latency_ms=int((time.perf_counter() - started) * 1000),
                )
                self._in_background(self._record(principal, generation, partial))
        # follow() either raises or ends with the answer.
        assert finished is not None
        answer = replace(
            finished, coalesced=coalesced, latency_ms=int((time.perf_counter() - started) * 1000)
        )
        answer.conversation_id = await self._record(principal, generation, answer)
        yield answer

    # --- afterwards --------------------------------------------------------------------------------

    async def _store(self, key: str, answer: Answer) -> None:
        # Only whole answers are worth repeating; a cut-off one would be served cut off for the TTL.
        if answer.finish_reason in COMPLETE and answer.text:
            await self.cache.put(
                key,
                CachedAnswer(
                    text=answer.text,
                    model=answer.model,
                    prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens,
                    finish_reason=answer.finish_reason,
                ),
            )

    async def _record(self, principal: auth_pb2.Principal, generation: Generation, answer: Answer) -> str:
        return await self.recorder.record(
            history_pb2.AppendExchangeRequest(
                owner_id=principal.user_id,
                conversation_id=generation.conversation_id,
                prompt=generation.user_text(),
                response=answer.text,
                source=answer.source,
                model=answer.model,
                usage=history_pb2.Usage(
                    prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens,
                    total_tokens=answer.total_tokens,
                ),
                latency_ms=answer.latency_ms,
                request_id=current_request_id.get(),
                created_at_ms=int(time.time() * 1000),
                exchange_id=uuid.uuid4().hex,
            )
        )

    def _in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background history writes (on shutdown)."""
        if self._background:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._background, timeout=5)


def _from_cache(cached: CachedAnswer) -> Answer:
    return Answer(
        text=cached.text,
        source="cache",
        model=cached.model,
        prompt_tokens=cached.prompt_tokens,
        completion_tokens=cached.completion_tokens,
        finish_reason=cached.finish_reason or "stop",
    )
