"""The one ask pipeline: what happens to a request for text, whichever API it came through.

POST /ask, the OpenAI-compatible routes and the public gRPC API each turn their request into a
`Generation`, and their answer back out of the events below; everything between is here, in this order:

1. `admit`: the input is checked (sizes, max_tokens, stops), the model resolved (an unknown one is
   refused before it counts), and the caller's limits counted (Redis, atomic; 429 when over one);
2. `Ticket.events`: the conversation's earlier turns are fetched and trimmed to what the model's context
   holds, by the model server's own token count; the cache is read (unless the caller regenerates):
   exact and normalised, then, for a lone question, the similar-request layer (similar.py);
   an identical request in flight is joined, in this process or, through the state Redis, in another
   gateway (flights.py), or a generation is started (whole or streamed);
3. afterwards, however the request ended: a whole answer is cached, the slot given back and the tokens
   charged (`Quotas.settle`), and the exchange recorded in history (spooled if history is down); for a
   whole answer, the settle and the exchange's entry in the history journal take one Redis round trip.

Failures are `ApiError`s, which carry both an HTTP status and a gRPC code, so each protocol answers its
own way without translating through the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from genai.auth.v1 import auth_pb2
from genai.history.v1 import history_pb2
from genai.inference.v1 import inference_pb2
from prometheus_client import Counter

from genai_common.request_id import current_request_id
from genai_gateway.cache import AnswerCache, CachedAnswer, cache_key
from genai_gateway.clients import HistoryClient, ModelClient
from genai_gateway.errors import ApiError
from genai_gateway.flights import FLIGHTS, LeaderLost, Publisher, Record, SharedFlights, Unavailable
from genai_gateway.quota import Admission, Quotas
from genai_gateway.settings import GatewaySettings
from genai_gateway.similar import Probe, SimilarLayer, eligible
from genai_gateway.spool import Append, HistoryRecorder

logger = logging.getLogger(__name__)

# Finish reasons of a whole answer; anything else (cut off by an error or a cancel) is not cached.
COMPLETE = ("stop", "length", "")
# A cached answer is streamed in pieces of about this many characters.
CACHED_CHUNK_CHARS = 16
# Tokens a chat template adds around each message (role markers, separators): counted on top of the text.
MESSAGE_OVERHEAD_TOKENS = 8
# When the history spool is full, how long a caller is asked to wait.
SPOOL_FULL_RETRY_S = 30
# Characters a token holds, roughly, where a prompt's tokens must be estimated (a stream cut short).
CHARS_PER_TOKEN = 4
# Token counts of stored turns, which never change: remembered per (model, message id).
TOKEN_COUNT_MEMORY = 20_000
# Counting a conversation's tokens at the model server (texts of one conversation, counted concurrently).
COUNT_TOKENS_TIMEOUT_S = 5.0
# At most this many stop sequences (OpenAI's limit).
MAX_STOPS = 4
# Times a follower takes over from leaders of other gateways that stopped, before it generates alone.
TAKEOVERS = 2
INTERRUPTED = "the answer was interrupted: the gateway generating it stopped; ask again to get a whole answer"

COALESCED = Counter("genai_gateway_coalesced_total", "Requests that shared an identical request's generation")
TRIMMED = Counter("genai_gateway_context_trimmed_total", "Requests whose conversation context was cut to fit")

Message = dict[str, Any]


@dataclass
class Generation:
    """One request for text, whichever API it came through."""

    # Chat messages ({"role", "content"}, and OpenAI's "tool_calls" / "tool_call_id"), or a plain prompt
    # (/v1/completions); exactly one is set.
    messages: list[Message] | None = None
    prompt: str | None = None
    model: str = ""
    # None: the server's default.
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # vLLM's further sampling fields (top_k, repetition_penalty, ...), already checked by the caller.
    extra: dict[str, Any] = field(default_factory=dict)
    # OpenAI's structured output and tools, passed to the model server as given.
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    conversation_id: str = ""
    # Where a new conversation belongs: "chat" (listed in the web chat) or "api".
    origin: str = "api"
    # Skip reading the cache (a "regenerate"); the new answer is still stored.
    no_cache: bool = False
    # What the caller calls its input, for messages about it ("prompt" or "messages").
    input_name: str = "messages"

    def user_text(self) -> str:
        """What the user wrote, as history records it: the prompt, or the last user message."""
        if self.prompt is not None:
            return self.prompt
        for message in reversed(self.messages or []):
            if message["role"] == "user":
                return str(message["content"])
        return str((self.messages or [{"content": ""}])[-1]["content"])


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
    # Function calls the model asked for, in OpenAI's shape ({"id", "type", "function": {...}}).
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # Served for a similar question (similar.py): the cosine similarity of the two questions.
    similarity: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def charged_tokens(self) -> int:
        """What this answer costs the caller: only a generation of its own, not a cached or shared one."""
        return self.total_tokens if self.source == "model" and not self.coalesced else 0


@dataclass
class Delta:
    """A piece of a streamed answer: text, and/or pieces of tool calls (OpenAI's streamed shape)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Queued:
    """The request waits for the model; 1 = next in line."""

    position: int


Event = Delta | Queued | Answer


class Restart:
    """Inside a flight: its generation starts again (the other gateway generating it stopped), so what its
    followers were given so far is void."""


def _tool_call_piece(call: inference_pb2.ToolCall) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": call.index}
    if call.id:
        piece["id"] = call.id
    if call.type:
        piece["type"] = call.type
    function: dict[str, str] = {}
    if call.name:
        function["name"] = call.name
    if call.arguments:
        function["arguments"] = call.arguments
    piece["function"] = function
    return piece


def merge_tool_calls(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole tool calls from streamed pieces: pieces of one call share its index; arguments concatenate."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(
            piece["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = piece.get("id") or call["id"]
        call["type"] = piece.get("type") or call["type"]
        function = piece.get("function", {})
        call["function"]["name"] = function.get("name") or call["function"]["name"]
        call["function"]["arguments"] += function.get("arguments", "")
    return [calls[index] for index in sorted(calls)]


def _recorded_text(answer: Answer) -> str:
    """The answer as history keeps it: its text, and any tool calls written out after it."""
    calls = [f"[{c['function']['name']}({c['function']['arguments']})]" for c in answer.tool_calls]
    return "\n".join([answer.text, *calls]) if calls else answer.text


class Flight:
    """One generation, shared by every identical request that arrives while it runs (single-flight).

    The generation runs in a task of its own, not in any one request: it goes on while anybody follows
    it, and is cancelled (freeing the GPU) when the last follower leaves, here and, for a flight that leads
    for other gateways too, in them.
    """

    def __init__(self) -> None:
        self.pieces: list[Delta] = []
        self.position = 0
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self.followers = 0
        self.task: asyncio.Task[None] | None = None
        # Relaying what another gateway generates: every request here is charged as a joiner.
        self.relayed = False
        # Leading for other gateways too: what is generated here is published for them.
        self.publisher: Publisher | None = None
        # Counts restarts: a follower that was given pieces of an earlier start is told (`Restart`).
        self.epoch = 0
        # Finished, with its answer in the cache or on its way there: a request that joins now is answered
        # as the cache would answer it (`AskPipeline._flight`).
        self.cached = False
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.answer is not None or self.error is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def publish(self, delta: Delta) -> None:
        self.position = 0
        self.pieces.append(delta)
        if self.publisher is not None:
            self.publisher.put(Record("d", {"t": delta.text, "c": delta.tool_calls}))
        self._notify()

    def queued(self, position: int) -> None:
        self.position = position
        if self.publisher is not None:
            self.publisher.put(Record("q", {"p": position}))
        self._notify()

    def restart(self) -> None:
        self.pieces = []
        self.position = 0
        self.epoch += 1
        self._notify()

    def abandon(self) -> None:
        """Cancel the generation if nobody follows it (any more)."""
        if self.followers == 0 and not self.done and self.task is not None:
            self.task.cancel()

    def finish(self, answer: Answer) -> None:
        self.answer = answer
        self._notify()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._notify()

    async def follow(self) -> AsyncIterator[Event | Restart]:
        self.followers += 1
        seen, told, epoch = 0, 0, self.epoch
        try:
            while True:
                changed = self._changed
                if self.epoch != epoch:
                    if seen:
                        yield Restart()
                    seen, told, epoch = 0, 0, self.epoch
                if self.position and self.position != told and seen == 0:
                    told = self.position
                    yield Queued(self.position)
                while seen < len(self.pieces):
                    seen += 1
                    yield self.pieces[seen - 1]
                if self.error is not None:
                    raise self.error
                if self.answer is not None:
                    yield self.answer
                    return
                await changed.wait()
        finally:
            self.followers -= 1
            if self.followers == 0 and not self.done:
                if self.publisher is not None and not self.publisher.stopped:
                    # Other gateways may follow it still: the publisher asks Redis, then abandons it or not.
                    self.publisher.idle()
                else:
                    self.abandon()


class AskPipeline:
    """Created once in the app's lifespan; shared by every API that asks for text."""

    def __init__(
        self,
        settings: GatewaySettings,
        model: ModelClient,
        history: HistoryClient,
        cache: AnswerCache,
        recorder: HistoryRecorder,
        quotas: Quotas,
        similar: SimilarLayer | None = None,
        shared: SharedFlights | None = None,
    ) -> None:
        self.settings = settings
        self.similar = similar
        # Single-flight across gateway processes; None: within this process only.
        self.shared = shared
        self.model = model
        self.history = history
        self.cache = cache
        self.recorder = recorder
        self.quotas = quotas
        self._models: list[inference_pb2.Model] = []
        self._models_at = 0.0
        self._models_lock = asyncio.Lock()
        # When the last look-up of the models failed, and its error.
        self._models_failure: tuple[float, ApiError] | None = None
        self._flights: dict[str, Flight] = {}
        self._token_counts: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._counting = True
        # History writes of streams whose client left: kept here so they finish and are not collected.
        self._background: set[asyncio.Task[Any]] = set()

    # --- models ------------------------------------------------------------------------------------

    @property
    def known_model(self) -> str:
        """The default model if already known, "" before the first look-up."""
        return self.settings.model or (self._models[0].id if self._models else "")

    async def models(self) -> list[inference_pb2.Model]:
        """The served models, looked up again after `models_refresh_s`."""
        if self._models and time.monotonic() - self._models_at < self.settings.models_refresh_s:
            return self._models
        if self._models and self._models_lock.locked():
            # Being looked up again: the list we have serves meanwhile.
            return self._models
        arrived = time.monotonic()
        async with self._models_lock:
            stale = not self._models or time.monotonic() - self._models_at >= self.settings.models_refresh_s
            failed = self._models_failure
            if stale and failed is not None and failed[0] >= arrived:
                # Failed while this request waited for it: the requests queued behind that look-up do not
                # each wait for another (a hung adapter would hold them one deadline after the other).
                if not self._models:
                    error = failed[1]
                    raise ApiError(
                        error.status, error.message, headers=error.headers, grpc_code=error.grpc_code
                    )
            elif stale:
                try:
                    self._models = await self.model.list_models()
                    self._models_at = time.monotonic()
                    self._models_failure = None
                except ApiError as exc:
                    self._models_failure = (time.monotonic(), exc)
                    if not self._models:
                        raise
                    # A list we had is better than none while the adapter restarts.
                    logger.warning("model list not refreshed: %s", exc.message)
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

    # --- 1. admission --------------------------------------------------------------------------------

    def _check(self, generation: Generation) -> None:
        """Refuse what the service will not do, before anything counts or runs."""
        name, limit = generation.input_name, self.settings.max_prompt_chars
        if generation.prompt is not None:
            texts = [generation.prompt]
            if not generation.prompt.strip():
                raise ApiError(422, f"{name} must not be empty")
        else:
            messages = generation.messages or []
            texts = [str(m.get("content") or "") for m in messages]
            if not any(m["role"] == "user" and str(m.get("content") or "").strip() for m in messages):
                raise ApiError(
                    422,
                    f"{name} must not be empty"
                    if name == "prompt"
                    else f"{name} must include a user message",
                )
            # OpenAI's rule, which model servers enforce (llama.cpp's with a 500): a tool's answer names its call.
            if any(m["role"] == "tool" and not m.get("tool_call_id") for m in messages):
                raise ApiError(422, f"{name}: a message of role tool needs the tool_call_id it answers")
        total = sum(len(text) for text in texts)
        if total > limit:
            raise ApiError(413, f"{name} is too long: {total} characters, the limit is {limit}")
        if generation.max_tokens is None:
            generation.max_tokens = self.settings.default_max_tokens
        elif not 1 <= generation.max_tokens <= self.settings.max_tokens_limit:
            raise ApiError(422, f"max_tokens must be between 1 and {self.settings.max_tokens_limit}")
        if len(generation.stop) > MAX_STOPS:
            raise ApiError(400, f"at most {MAX_STOPS} stop sequences", code="invalid_stop")

    async def admit(self, principal: auth_pb2.Principal, generation: Generation) -> Ticket:
        """Check the request, resolve its model and count it against the caller's limits.

        The returned ticket must be run (`events` or `answer`): that is what gives its slot back.
        """
        self._check(generation)
        if await self.recorder.full():
            raise ApiError(
                503,
                "the history service is unavailable and the answers waiting for it have reached their "
                "limit; try again shortly",
                headers={"Retry-After": str(SPOOL_FULL_RETRY_S)},
            )
        # An unknown model is refused before it counts against the caller's limits.
        generation.model = await self.resolve_model(generation.model)
        limits = self.quotas.limits_for(principal.role, principal.limits_json)
        admission = await self.quotas.admit(f"user:{principal.user_id}", limits)
        return Ticket(self, principal, generation, admission)

    # --- 2. context ----------------------------------------------------------------------------------

    async def _context(self, owner_id: str, generation: Generation) -> list[Message]:
        """The earlier turns of the conversation that fit, oldest first, as chat messages."""
        try:
            conversation = await self.history.get_conversation(
                history_pb2.GetConversationRequest(
                    owner_id=owner_id, conversation_id=generation.conversation_id
                )
            )
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(404, "conversation not found", code="conversation_not_found") from None
            raise
        # Newest turns first, whole or not at all, up to the character budget (a cheap first bound).
        budget = self.settings.context_budget_chars
        turns: list[history_pb2.Message] = []
        for message in reversed(conversation.messages):
            size = len(message.prompt) + len(message.response)
            if size > budget:
                break
            budget -= size
            turns.append(message)
        if turns:
            turns = await self._fitting(generation, turns)
        context: list[Message] = []
        for message in reversed(turns):
            context += [
                {"role": "user", "content": message.prompt},
                {"role": "assistant", "content": message.response},
            ]
        return context

    async def _fitting(
        self, generation: Generation, turns: list[history_pb2.Message]
    ) -> list[history_pb2.Message]:
        """The newest of `turns` (given newest first) that fit the model's context window with the request
        and its answer, counted by the model server's tokenizer. Without one, the character budget rules."""
        if not self._counting:
            return turns
        model = generation.model
        unknown = [m for m in turns if (model, m.id) not in self._token_counts]
        current = [str(m.get("content") or "") for m in generation.messages or []]
        try:
            counted = await self.model.count_tokens(
                inference_pb2.CountTokensRequest(
                    model=model, texts=[*current, *(t for m in unknown for t in (m.prompt, m.response))]
                ),
                timeout_s=COUNT_TOKENS_TIMEOUT_S,
            )
        except ApiError as exc:
            if exc.grpc_code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            logger.warning("the model server counts no tokens; conversation context is cut by characters")
            self._counting = False
            return turns
        counts = list(counted.counts)
        request_tokens = sum(counts[: len(current)]) + MESSAGE_OVERHEAD_TOKENS * len(current)
        for i, message in enumerate(unknown):
            at = len(current) + 2 * i
            self._remember(model, message.id, counts[at] + counts[at + 1] + 2 * MESSAGE_OVERHEAD_TOKENS)
        window = counted.max_model_len or await self._context_window(model)
        budget = window - self.settings.context_reserve_tokens - (generation.max_tokens or 0) - request_tokens
        fitting: list[history_pb2.Message] = []
        for message in turns:
            cost = self._token_counts[(model, message.id)]
            if cost > budget:
                TRIMMED.inc()
                break
            budget -= cost
            fitting.append(message)
        return fitting

    def _remember(self, model: str, message_id: str, tokens: int) -> None:
        self._token_counts[(model, message_id)] = tokens
        while len(self._token_counts) > TOKEN_COUNT_MEMORY:
            self._token_counts.popitem(last=False)

    async def _context_window(self, model: str) -> int:
        """The model's context length as its server lists it, else the configured one."""
        for listed in await self.models():
            if listed.id == model and listed.max_model_len:
                return int(listed.max_model_len)
        return self.settings.model_context_tokens

    # --- generation --------------------------------------------------------------------------------

    def _request(
        self, principal: auth_pb2.Principal, generation: Generation, messages: list[Message]
    ) -> inference_pb2.GenerateRequest:
        request = inference_pb2.GenerateRequest(
            model=generation.model,
            max_tokens=generation.max_tokens or 0,
            stop=generation.stop,
            user=principal.user_id,
            # The conversation's turns go to the model server replica that holds its earlier ones in its
            # prefix cache (the adapter routes on it while that replica is not overloaded).
            affinity_key=generation.conversation_id,
        )
        if generation.prompt is not None:
            request.prompt = generation.prompt
        else:
            request.messages.extend(_chat_message(m) for m in messages)
        if generation.temperature is not None:
            request.temperature = generation.temperature
        if generation.top_p is not None:
            request.top_p = generation.top_p
        if generation.seed is not None:
            request.seed = generation.seed
        if generation.extra:
            request.extra_json = json.dumps(generation.extra)
        if generation.response_format is not None:
            request.response_format_json = json.dumps(generation.response_format)
        if generation.tools is not None:
            request.tools_json = json.dumps(generation.tools)
        if generation.tool_choice is not None:
            request.tool_choice_json = json.dumps(generation.tool_choice)
        return request

    def _params(self, generation: Generation) -> dict[str, Any]:
        """Everything besides the messages that shapes an answer."""
        params: dict[str, Any] = {
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "stop": generation.stop,
            "seed": generation.seed,
            "extra": generation.extra,
        }
        for name in ("response_format", "tools", "tool_choice"):
            if getattr(generation, name) is not None:
                params[name] = getattr(generation, name)
        if generation.prompt is not None:
            params["prompt"] = " ".join(generation.prompt.split())
        return params

    def _scope(self, principal: auth_pb2.Principal, shareable: bool = True) -> str:
        """Whose answers a request may be given: everyone's (""), or only its own user's."""
        return "" if self.settings.cache_scope == "global" and shareable else principal.user_id

    def _key(self, principal: auth_pb2.Principal, generation: Generation, messages: list[Message]) -> str:
        # Only a single question without context is shared between users: earlier turns, a conversation
        # from history or a system prompt may hold what is private to its user, and an answer made from
        # them stays in that user's scope.
        return cache_key(
            generation.model,
            messages,
            self._params(generation),
            case_insensitive=self.settings.cache_case_insensitive,
            scope=self._scope(principal, shareable=_single_question(generation)),
        )

    async def _probe(self, principal: auth_pb2.Principal, generation: Generation) -> Probe | None:
        """The request ready for the similar-request layer, if it is on and the request eligible."""
        if self.similar is None or generation.no_cache or generation.conversation_id or generation.prompt:
            return None
        extras = any(
            value is not None
            for value in (generation.response_format, generation.tools, generation.tool_choice)
        )
        text = eligible(generation.messages, extras)
        if text is None:
            return None
        return await self.similar.probe(
            text, generation.model, self._params(generation), self._scope(principal)
        )

    def _flight(
        self,
        key: str,
        request: inference_pb2.GenerateRequest,
        streaming: bool,
        *,
        probe: Probe | None = None,
        regenerated: bool = False,
    ) -> tuple[Flight, bool]:
        """The generation for `key`: the one in progress here if there is one (True), otherwise a new one,
        which another gateway may be generating already (`_coordinated`).

        A regenerate asks for an answer of its own: it neither joins a generation in progress nor is joined,
        here or in other gateways, and its answer is cached only where no answer is (it never replaces one
        that others are given) and is not offered to similar questions.
        """
        flight = None if regenerated else self._flights.get(key)
        # A flight that has its answer is joined too while its answer is being cached (it leaves `_flights`
        # once the cache has it): the request is then answered as the cache would have answered it. An answer
        # the cache does not take (cut off, a tool call, too long, the cache off or failing) is not joined
        # once finished: that request generates its own, as it would have a moment later.
        if flight is not None and flight.error is None and (not flight.done or flight.cached):
            if not flight.done:
                COALESCED.inc()
            return flight, True
        flight = Flight()
        if not regenerated:
            self._flights[key] = flight

        async def run() -> None:
            try:
                answer = None
                if self.shared is not None and not regenerated:
                    answer = await self._coordinated(self.shared, key, flight)
                generated = answer is None
                if answer is None:
                    if streaming:
                        answer = await self._generate_stream(flight, request)
                    else:
                        answer = await self._generate(flight, request)
                # The followers have the answer at once; it is cached meanwhile, before the flight leaves
                # `_flights` (and, for other gateways, lets go of its claim), so that no identical request
                # slips in between and generates again.
                flight.cached = generated and self._cacheable(answer)
                flight.finish(answer)
                if flight.cached:
                    stored = flight.cached = await self._store(key, answer, overwrite=not regenerated)
                    if stored and probe is not None and self.similar is not None and not regenerated:
                        await self.similar.add(probe, key)
                if flight.publisher is not None:
                    await flight.publisher.finish(Record("a", _answer_record(answer)))
            except ApiError as exc:
                flight.fail(exc)
                if flight.publisher is not None:
                    await flight.publisher.finish(Record("e", _error_record(exc)))
            except asyncio.CancelledError:
                flight.fail(ApiError(503, "the generation was cancelled"))
                if flight.publisher is not None:
                    # Other gateways' followers, if any joined since, take over.
                    self.in_background(flight.publisher.finish(Record("x")))
                raise
            except Exception as exc:
                logger.exception("generation failed")
                error = ApiError(500, "internal error")
                flight.fail(error)
                if flight.publisher is not None:
                    self.in_background(flight.publisher.finish(Record("e", _error_record(error))))
                raise exc from None
            finally:
                if self._flights.get(key) is flight:
                    del self._flights[key]

        flight.task = asyncio.create_task(run())
        return flight, False

    async def _coordinated(self, shared: SharedFlights, key: str, flight: Flight) -> Answer | None:
        """Lead or follow the generation for `key` across gateways. The answer when another gateway's
        generation (or the cache) gave it; None when this process is to generate: for every gateway (with
        `flight.publisher` set), or alone when Redis cannot coordinate."""
        for attempt in range(TAKEOVERS + 1):
            try:
                claim = await shared.claim(key)
            except Unavailable:
                break
            if claim.leads:
                flight.publisher = shared.publisher(claim, flight.abandon)
                FLIGHTS.labels("took_over" if attempt else "led").inc()
                # The flight before may have cached its answer and let go between our look-up and our claim.
                cached = await self.cache.get(key, counted=False)
                if cached is None:
                    return None
                answer = _from_cache(cached)
                # Streams show the pieces, not the last event: the text goes out as a cache hit's does.
                for piece in _cached_pieces(answer.text):
                    flight.publish(piece)
                return answer
            FLIGHTS.labels("followed").inc()
            if attempt == 0:
                COALESCED.inc()
            flight.relayed = True
            try:
                async for record in shared.follow(claim):
                    if record.kind == "d":
                        flight.publish(Delta(record.data.get("t", ""), record.data.get("c", [])))
                    elif record.kind == "q":
                        flight.queued(int(record.data.get("p", 0)))
                    elif record.kind == "a":
                        return _answer_from_record(record.data)
                    elif record.kind == "e":
                        raise _error_from_record(record.data)
                # "x": the leader stopped without an answer.
            except Unavailable:
                flight.relayed = False
                flight.restart()
                break
            except LeaderLost as exc:
                logger.warning("the gateway generating an identical request stopped (%s); taking over", exc)
            flight.relayed = False
            flight.restart()
        FLIGHTS.labels("alone").inc()
        return None

    async def _generate(self, flight: Flight, request: inference_pb2.GenerateRequest) -> Answer:
        reply = await self.model.generate(request)
        tool_calls = [_tool_call_piece(c) for c in reply.tool_calls]
        if reply.text or tool_calls:
            flight.publish(Delta(reply.text, tool_calls))
        return Answer(
            text=reply.text,
            source="model",
            model=reply.model or request.model,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            finish_reason=reply.finish_reason,
            tool_calls=merge_tool_calls(tool_calls),
        )

    async def _generate_stream(self, flight: Flight, request: inference_pb2.GenerateRequest) -> Answer:
        answer = Answer(text="", source="model", model=request.model)
        # Leaving this loop early (the task is cancelled: nobody listens any more) cancels the call upstream.
        async for chunk in self.model.generate_stream(request):
            if chunk.queue_position:
                flight.queued(chunk.queue_position)
            if chunk.text or chunk.tool_calls:
                flight.publish(Delta(chunk.text, [_tool_call_piece(c) for c in chunk.tool_calls]))
            if chunk.finish_reason:
                answer.finish_reason = chunk.finish_reason
            if chunk.usage.completion_tokens:
                answer.prompt_tokens = chunk.usage.prompt_tokens
                answer.completion_tokens = chunk.usage.completion_tokens
            if chunk.model:
                answer.model = chunk.model
        answer.text = "".join(piece.text for piece in flight.pieces)
        answer.tool_calls = merge_tool_calls([c for piece in flight.pieces for c in piece.tool_calls])
        return answer

    # --- 3. afterwards -------------------------------------------------------------------------------

    def _cacheable(self, answer: Answer) -> bool:
        # Only whole text answers are worth repeating: a cut-off one would be served cut off for the TTL,
        # and a tool call is a step of the caller's own program.
        complete = answer.finish_reason in COMPLETE and bool(answer.text) and not answer.tool_calls
        return complete and self.cache.takes(answer.text)

    async def _store(self, key: str, answer: Answer, *, overwrite: bool = True) -> bool:
        """Cache an answer (`_cacheable`); True if the cache has it now."""
        return await self.cache.put(
            key,
            CachedAnswer(
                text=answer.text,
                model=answer.model,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                finish_reason=answer.finish_reason,
            ),
            overwrite=overwrite,
        )

    async def _record(
        self,
        principal: auth_pb2.Principal,
        generation: Generation,
        answer: Answer,
        append: Append | None = None,
    ) -> str:
        return await self.recorder.record(
            history_pb2.AppendExchangeRequest(
                owner_id=principal.user_id,
                conversation_id=generation.conversation_id,
                prompt=generation.user_text(),
                response=_recorded_text(answer),
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
                origin=generation.origin,
            ),
            append,
        )

    def in_background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background history writes (on shutdown)."""
        if self._background:
            with contextlib.suppress(Exception):
                await asyncio.wait(self._background, timeout=5)


class Ticket:
    """An admitted request. Run it once, as events or as a whole answer; however that ends (answer,
    failure, the client gone), its slot is given back and the tokens it cost are charged."""

    def __init__(
        self,
        pipeline: AskPipeline,
        principal: auth_pb2.Principal,
        generation: Generation,
        admission: Admission,
    ) -> None:
        self.pipeline = pipeline
        self.principal = principal
        self.generation = generation
        self.admission = admission
        # What a generation spent before its client left (each streamed piece a token, the prompt estimated).
        self.abandoned_tokens = 0

    @property
    def model(self) -> str:
        return self.generation.model

    def headers(self) -> dict[str, str]:
        """The caller's rate-limit headers (X-RateLimit-*)."""
        return self.admission.headers()

    async def answer(self) -> Answer:
        """The whole answer at once."""
        result: Answer | None = None
        async for item in self.events(streaming=False):
            if isinstance(item, Answer):
                result = item
        assert result is not None  # events() either raises or ends with the answer
        return result

    async def events(self, *, streaming: bool = True) -> AsyncIterator[Event]:
        """The answer as it is generated: Queued and Delta events, then the whole Answer last.

        Identical requests in flight share one generation. If the consumer stops early (the client went
        away) and nobody else follows that generation, it is cancelled upstream; what was generated so far
        is still recorded in history.
        """
        answer: Answer | None = None
        try:
            # aclosing: a consumer that leaves closes the inner steps now, not whenever they are collected.
            async with contextlib.aclosing(self._events(streaming)) as events:
                async for item in events:
                    if isinstance(item, Answer):
                        answer = item
                    yield item
        finally:
            # A whole answer was settled with its journal entry (`_settling`); anything else is settled here,
            # shielded: a client that leaves while this runs must not keep its slot.
            if not self.admission.released:
                tokens = answer.charged_tokens if answer is not None else self.abandoned_tokens
                await asyncio.shield(self.pipeline.quotas.settle(self.admission, tokens))

    def _settling(self, answer: Answer) -> Append:
        """How the answer's exchange is journaled: in the round trip that settles this request."""

        async def append(key: str, record: bytes) -> None:
            # Shielded like the settle in `events`: a client that leaves meanwhile must not keep its slot.
            await asyncio.shield(
                self.pipeline.quotas.settle_and_append(self.admission, answer.charged_tokens, key, record)
            )

        return append

    async def _events(self, streaming: bool) -> AsyncIterator[Event]:
        pipeline, principal, generation = self.pipeline, self.principal, self.generation
        started = time.perf_counter()
        messages = generation.messages or []
        if generation.conversation_id:
            context = await pipeline._context(principal.user_id, generation)
            system = [m for m in messages if m["role"] == "system"]
            messages = system + context + [m for m in messages if m["role"] != "system"]
        key = pipeline._key(principal, generation, messages)
        cached = None if generation.no_cache else await pipeline.cache.get(key)
        similarity: float | None = None
        probe = None if cached is not None else await pipeline._probe(principal, generation)
        if probe is not None and pipeline.similar is not None:
            match = await pipeline.similar.lookup(probe)
            if match is not None:
                cached = await pipeline.cache.get(match.answer_key)
                similarity = match.similarity
        if cached is not None:
            answer = _from_cache(cached, similarity)
            for piece in _cached_pieces(answer.text):
                yield piece
            answer.latency_ms = int((time.perf_counter() - started) * 1000)
            answer.conversation_id = await pipeline._record(
                principal, generation, answer, self._settling(answer)
            )
            yield answer
            return

        flight, coalesced = pipeline._flight(
            key,
            pipeline._request(principal, generation, messages),
            streaming,
            probe=probe,
            regenerated=generation.no_cache,
        )
        # Joined once its answer was whole, while it was being cached: answered as from the cache.
        from_cache = coalesced and flight.done
        pieces: list[Delta] = []
        finished: Answer | None = None
        restarted = False
        try:
            async with contextlib.aclosing(flight.follow()) as following:
                async for item in following:
                    if isinstance(item, Restart):
                        # Pieces of another gateway's generation, which stopped: a stream that showed them
                        # cannot take them back, so it ends with an error; a whole answer is just waited for.
                        restarted = True
                        if streaming:
                            raise ApiError(503, INTERRUPTED, headers={"Retry-After": "1"})
                        pieces.clear()
                    elif isinstance(item, Delta):
                        pieces.append(item)
                        if streaming:
                            yield item
                    elif isinstance(item, Queued):
                        if streaming:
                            yield item
                    else:
                        finished = item
        finally:
            if finished is None and pieces:
                # The client left mid-answer: keep what the user wrote and what they were shown, and charge
                # what the generation spent so far, so that leaving just before the end dodges no quota.
                partial = Answer(
                    text="".join(p.text for p in pieces),
                    source="model",
                    model=generation.model,
                    finish_reason="cancelled",
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    prompt_tokens=_estimated_tokens(messages, generation.prompt),
                    completion_tokens=len(pieces),
                    # Pieces relayed from another gateway cost this caller nothing, as a joiner's.
                    coalesced=coalesced or flight.relayed or restarted,
                )
                self.abandoned_tokens = partial.charged_tokens
                pipeline.in_background(pipeline._record(principal, generation, partial))
        # follow() either raises or ends with the answer.
        assert finished is not None
        answer = replace(
            finished,
            source="cache" if from_cache else finished.source,
            coalesced=(coalesced or flight.relayed) and not from_cache,
            latency_ms=int((time.perf_counter() - started) * 1000),
        )
        answer.conversation_id = await pipeline._record(principal, generation, answer, self._settling(answer))
        yield answer


def _answer_record(answer: Answer) -> dict[str, Any]:
    """What followers in other gateways need of a finished answer (each adds its own latency and history)."""
    return {
        "text": answer.text,
        "source": answer.source,
        "model": answer.model,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "finish_reason": answer.finish_reason,
        "tool_calls": answer.tool_calls,
    }


def _answer_from_record(data: dict[str, Any]) -> Answer:
    return Answer(
        text=str(data.get("text", "")),
        source=str(data.get("source", "model")),
        model=str(data.get("model", "")),
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        completion_tokens=int(data.get("completion_tokens", 0)),
        finish_reason=str(data.get("finish_reason", "")),
        tool_calls=list(data.get("tool_calls", [])),
    )


def _error_record(error: ApiError) -> dict[str, Any]:
    return {
        "status": error.status,
        "message": error.message,
        "code": error.code,
        "headers": error.headers,
        "grpc": error.grpc_code.name,
    }


def _error_from_record(data: dict[str, Any]) -> ApiError:
    return ApiError(
        int(data.get("status", 500)),
        str(data.get("message", "internal error")),
        code=data.get("code"),
        headers=dict(data.get("headers") or {}),
        grpc_code=grpc.StatusCode[str(data.get("grpc", "INTERNAL"))],
    )


def _single_question(generation: Generation) -> bool:
    """A plain prompt, or exactly one user message, and no conversation from history."""
    if generation.conversation_id:
        return False
    return generation.prompt is not None or [m["role"] for m in generation.messages or []] == ["user"]


def _estimated_tokens(messages: list[Message], prompt: str | None) -> int:
    """The prompt's tokens when no count came back (the generation was cut short): about four characters
    a token, and a chat template's few per message."""
    if prompt is not None:
        return len(prompt) // CHARS_PER_TOKEN
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // CHARS_PER_TOKEN + MESSAGE_OVERHEAD_TOKENS * len(messages)


def _chat_message(message: Message) -> inference_pb2.ChatMessage:
    out = inference_pb2.ChatMessage(
        role=message["role"],
        content=str(message.get("content") or ""),
        tool_call_id=message.get("tool_call_id", ""),
    )
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function", {})
        out.tool_calls.add(
            index=index,
            id=call.get("id", ""),
            type=call.get("type", "function"),
            name=function.get("name", ""),
            arguments=function.get("arguments", ""),
        )
    return out


def _cached_pieces(text: str) -> Iterator[Delta]:
    """A cached answer's text as a stream shows it: in pieces of CACHED_CHUNK_CHARS."""
    for start in range(0, len(text), CACHED_CHUNK_CHARS):
        yield Delta(text[start : start + CACHED_CHUNK_CHARS])


def _from_cache(cached: CachedAnswer, similarity: float | None = None) -> Answer:
    return Answer(
        text=cached.text,
        source="cache",
        model=cached.model,
        prompt_tokens=cached.prompt_tokens,
        completion_tokens=cached.completion_tokens,
        finish_reason=cached.finish_reason or "stop",
        similarity=similarity,
    )
