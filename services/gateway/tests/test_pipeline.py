"""The ask pipeline against fake model and history services at the gRPC boundary, and a real Redis.

The fakes are real gRPC servers on port 0 whose servicers record what they were asked and answer as told,
so the pipeline's own clients, channels, interceptors, deadlines and error mapping are all exercised;
only the services behind them are stand-ins. Redis (limits, cache, spool) is the test run's real one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from genai.auth.v1 import auth_pb2
from genai.history.v1 import history_pb2, history_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_common.grpc_client import create_channel
from genai_common.redis_guard import RedisGuard
from genai_common.request_id import current_request_id
from genai_gateway.cache import AnswerCache
from genai_gateway.clients import HistoryClient, ModelClient
from genai_gateway.errors import ApiError
from genai_gateway.pipeline import Answer, AskPipeline, Delta, Generation, Queued
from genai_gateway.quota import UNLIMITED, LimitSet, Quotas
from genai_gateway.settings import GatewaySettings
from genai_gateway.spool import HistoryRecorder

MODEL = "fake-model"


@dataclass
class FakeModel(inference_pb2_grpc.InferenceServiceServicer):
    """Answers "echo: <last message>" in pieces; `gate` holds every generation until it is set."""

    pieces: int = 3
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[inference_pb2.GenerateRequest] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    cancelled: int = 0
    finished: int = 0
    fail_with: grpc.StatusCode | None = None
    # Tokens per text for CountTokens: None answers UNIMPLEMENTED (a server without a tokenizer).
    chars_per_token: int | None = 1
    max_model_len: int = 0

    def _note(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        self.requests.append(request)
        self.request_ids += [str(v) for k, v in context.invocation_metadata() or () if k == "x-request-id"]

    def _text(self, request: inference_pb2.GenerateRequest) -> str:
        return "echo: " + (request.messages[-1].content if request.messages else request.prompt)

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        if self.fail_with is not None:
            context.set_trailing_metadata((("retry-after", "7"),))
            await context.abort(self.fail_with, "told to fail")

    async def ListModels(
        self, request: inference_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.ListModelsResponse:
        return inference_pb2.ListModelsResponse(models=[inference_pb2.Model(id=MODEL, owned_by="test")])

    async def CountTokens(
        self, request: inference_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.CountTokensResponse:
        if self.chars_per_token is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no tokenizer")
        per = self.chars_per_token or 1
        return inference_pb2.CountTokensResponse(
            counts=[-(-len(text) // per) for text in request.texts], max_model_len=self.max_model_len
        )

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.GenerateResponse:
        self._note(request, context)
        await self._refuse(context)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return inference_pb2.GenerateResponse(
            text=self._text(request),
            model=MODEL,
            finish_reason="stop",
            usage=inference_pb2.Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
        )

    async def GenerateStream(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        self._note(request, context)
        await self._refuse(context)
        text = self._text(request)
        size = -(-len(text) // self.pieces)
        try:
            yield inference_pb2.GenerateChunk(queue_position=1)
            yield inference_pb2.GenerateChunk(text=text[:size], model=MODEL)
            await self.gate.wait()
            for start in range(size, len(text), size):
                yield inference_pb2.GenerateChunk(text=text[start : start + size])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        yield inference_pb2.GenerateChunk(
            finish_reason="stop",
            usage=inference_pb2.Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12),
        )


@dataclass
class FakeHistory(history_pb2_grpc.HistoryServiceServicer):
    appended: list[history_pb2.AppendExchangeRequest] = field(default_factory=list)
    conversations: dict[str, history_pb2.Conversation] = field(default_factory=dict)
    down: bool = False

    async def AppendExchange(
        self, request: history_pb2.AppendExchangeRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendExchangeResponse:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        self.appended.append(request)
        return history_pb2.AppendExchangeResponse(conversation_id=request.conversation_id or "c-new")

    async def AppendExchanges(
        self, request: history_pb2.AppendExchangesRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.AppendExchangesResponse:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "down")
        self.appended.extend(request.exchanges)
        return history_pb2.AppendExchangesResponse(
            results=[history_pb2.AppendResult(conversation_id=e.conversation_id) for e in request.exchanges]
        )

    async def GetConversation(
        self, request: history_pb2.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.Conversation:
        conversation = self.conversations.get(request.conversation_id)
        if conversation is None or conversation.summary.owner_id != request.owner_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, "conversation not found")
        return conversation


@dataclass
class Rig:
    pipeline: AskPipeline
    model: FakeModel
    history: FakeHistory
    quotas: Quotas

    async def stored(self) -> list[history_pb2.AppendExchangeRequest]:
        """What history holds once the journal is written (as a read of history would see it)."""
        await self.pipeline.recorder.flush()
        return self.history.appended


def principal(user: str = "u1") -> auth_pb2.Principal:
    return auth_pb2.Principal(user_id=user, username=user, role="user")


@pytest.fixture
def settings(key_prefix: str) -> GatewaySettings:
    return GatewaySettings(
        history_timeout_s=5,
        generate_timeout_s=10,
        limits_user=LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=UNLIMITED),
        context_budget_chars=10_000,
        model_context_tokens=400,
        context_reserve_tokens=0,
    )


@pytest.fixture
async def rig(settings: GatewaySettings, redis_client: redis.Redis, key_prefix: str) -> AsyncIterator[Rig]:
    model, history = FakeModel(), FakeHistory()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(model, server)
    history_pb2_grpc.add_HistoryServiceServicer_to_server(history, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    guard = RedisGuard()
    quotas = Quotas(
        redis_client, guard, {"user": settings.limits_user}, slot_ttl_s=60, prefix=f"{key_prefix}:quota"
    )
    history_client = HistoryClient(channel, settings.history_timeout_s, 10)
    cache = AnswerCache(redis_client, 60, guard=guard)
    recorder = HistoryRecorder(history_client, redis_client, guard=guard, key=f"{key_prefix}:journal")
    # As in the app: reads of history wait for the journal, which a loop of its own writes.
    history_client.before_read = recorder.flush
    pipeline = AskPipeline(
        settings, ModelClient(channel, settings.generate_timeout_s), history_client, cache, recorder, quotas
    )
    journal = asyncio.create_task(recorder.drain_forever(1.0))
    try:
        yield Rig(pipeline, model, history, quotas)
    finally:
        journal.cancel()
        await pipeline.drain()
        await channel.close()
        await server.stop(None)


def ask(prompt: str, **fields: object) -> Generation:
    return Generation(messages=[{"role": "user", "content": prompt}], input_name="prompt", **fields)  # type: ignore[arg-type]


def unique() -> str:
    return f"question {uuid.uuid4().hex}"


async def slots_in_use(rig: Rig, user: str = "u1") -> int:
    return await rig.quotas.in_use(f"user:{user}")


@pytest.fixture
def request_id() -> Iterator[str]:
    rid = uuid.uuid4().hex
    token = current_request_id.set(rid)
    yield rid
    current_request_id.reset(token)


# --- the order: check, model, admit ------------------------------------------------------------------------


async def test_a_whole_answer_is_generated_recorded_and_settled(rig: Rig, request_id: str) -> None:
    rig.model.gate.set()
    prompt = unique()
    ticket = await rig.pipeline.admit(principal(), ask(prompt, origin="chat"))
    assert await slots_in_use(rig) == 1
    answer = await ticket.answer()
    assert (answer.text, answer.source, answer.model, answer.total_tokens) == (
        f"echo: {prompt}",
        "model",
        MODEL,
        12,
    )
    assert await slots_in_use(rig) == 0
    (stored,) = await rig.stored()
    # A new conversation's id is the gateway's, given before history has stored the exchange.
    assert uuid.UUID(answer.conversation_id) and stored.start_conversation
    assert stored.conversation_id == answer.conversation_id
    assert (stored.prompt, stored.response, stored.origin, stored.request_id) == (
        prompt,
        f"echo: {prompt}",
        "chat",
        request_id,
    )
    # The request id rode on the call without anyone passing it.
    assert rig.model.request_ids == [request_id]


@pytest.mark.parametrize(
    ("generation", "status", "words"),
    [
        (ask("   "), 422, "prompt must not be empty"),
        (ask("x" * 20_000), 413, "prompt is too long: 20000 characters"),
        (ask("hi", max_tokens=0), 422, "max_tokens must be between 1 and"),
        (ask("hi", stop=["a", "b", "c", "d", "e"]), 400, "at most 4 stop sequences"),
        (
            Generation(messages=[{"role": "system", "content": "be brief"}]),
            422,
            "messages must include a user",
        ),
        (ask("hi", model="no-such-model"), 404, "does not exist"),
    ],
)
async def test_bad_requests_are_refused_before_they_count(
    rig: Rig, generation: Generation, status: int, words: str
) -> None:
    with pytest.raises(ApiError) as refused:
        await rig.pipeline.admit(principal(), generation)
    assert refused.value.status == status and words in refused.value.message
    assert refused.value.grpc_code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert await slots_in_use(rig) == 0 and rig.model.requests == []


async def test_over_a_limit_is_a_429_that_grpc_callers_see_as_resource_exhausted(
    rig: Rig, settings: GatewaySettings
) -> None:
    rig.model.gate.set()
    rig.quotas.role_limits["user"] = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=1)
    held = await rig.pipeline.admit(principal(), ask(unique()))
    with pytest.raises(ApiError) as refused:
        await rig.pipeline.admit(principal(), ask(unique()))
    assert refused.value.status == 429 and refused.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Retry-After" in refused.value.headers
    await held.answer()
    await (await rig.pipeline.admit(principal(), ask(unique()))).answer()


async def test_a_full_model_queue_is_503_over_http_and_stays_resource_exhausted_over_grpc(rig: Rig) -> None:
    rig.model.fail_with = grpc.StatusCode.RESOURCE_EXHAUSTED
    ticket = await rig.pipeline.admit(principal(), ask(unique()))
    with pytest.raises(ApiError) as busy:
        await ticket.answer()
    assert busy.value.status == 503 and busy.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert busy.value.headers["Retry-After"] == "7"
    assert await slots_in_use(rig) == 0


# --- cache and single-flight -------------------------------------------------------------------------------


async def test_an_identical_request_comes_from_the_cache_unless_regenerated(rig: Rig) -> None:
    rig.model.gate.set()
    prompt = unique()
    first = await (await rig.pipeline.admit(principal("a"), ask(prompt))).answer()
    again = await (await rig.pipeline.admit(principal("b"), ask(f"  {prompt} "))).answer()
    assert (first.source, again.source, again.text) == ("model", "cache", first.text)
    assert again.charged_tokens == 0 and first.charged_tokens == 12
    regenerated = await (await rig.pipeline.admit(principal("b"), ask(prompt, no_cache=True))).answer()
    assert regenerated.source == "model" and len(rig.model.requests) == 2


async def _until_generating(rig: Rig) -> None:
    """Until the model has a request (a loaded machine may take a while to bring it there)."""
    for _ in range(200):
        if rig.model.requests:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the model never got the request")


async def test_identical_requests_in_flight_share_one_generation_and_only_one_is_charged(rig: Rig) -> None:
    prompt = unique()
    tickets = [await rig.pipeline.admit(principal(f"user{i}"), ask(prompt)) for i in range(5)]
    answers = asyncio.gather(*(t.answer() for t in tickets))
    await _until_generating(rig)
    await asyncio.sleep(0.2)  # time for a second generation to start, were there one
    assert len(rig.model.requests) == 1
    rig.model.gate.set()
    results = await answers
    assert {a.text for a in results} == {f"echo: {prompt}"}
    assert sorted(a.charged_tokens for a in results) == [0, 0, 0, 0, 12]
    assert len(await rig.stored()) == 5
    for i in range(5):
        assert await slots_in_use(rig, f"user{i}") == 0


async def test_an_answer_is_given_before_it_is_cached_and_joined_meanwhile_as_from_the_cache(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache write is off the answer's path: the first caller has its answer while the write waits, and an
    identical request in that moment joins the finished generation instead of starting another."""
    rig.model.gate.set()
    written, release = asyncio.Event(), asyncio.Event()
    put = rig.pipeline.cache.put

    async def slow_put(*args: Any, **kwargs: Any) -> bool:
        await release.wait()
        stored = await put(*args, **kwargs)
        written.set()
        return stored

    monkeypatch.setattr(rig.pipeline.cache, "put", slow_put)
    prompt = unique()
    # Bounded: an answer that waited for its cache write would wait here for ever.
    first = await asyncio.wait_for((await rig.pipeline.admit(principal("a"), ask(prompt))).answer(), 5)
    assert not written.is_set()
    meanwhile = await (await rig.pipeline.admit(principal("b"), ask(prompt))).answer()
    assert (first.source, meanwhile.source, meanwhile.text) == ("model", "cache", first.text)
    assert (first.charged_tokens, meanwhile.charged_tokens) == (12, 0)
    release.set()
    await written.wait()
    later = await (await rig.pipeline.admit(principal("c"), ask(prompt))).answer()
    assert later.source == "cache" and len(rig.model.requests) == 1


async def test_a_finished_answer_the_cache_does_not_take_is_not_joined(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer the cache refuses (here: longer than its entries may be) is no cache answer: an identical
    request that comes while its generation winds up generates and pays for its own."""
    rig.model.gate.set()
    rig.pipeline.cache.max_entry_chars = 3
    release = asyncio.Event()
    store = rig.pipeline._store

    async def slow_store(*args: Any, **kwargs: Any) -> bool:
        # The flight's last steps after its answer (a publisher's write for other gateways, the similar index).
        stored = await store(*args, **kwargs)
        await release.wait()
        return stored

    monkeypatch.setattr(rig.pipeline, "_store", slow_store)
    prompt = unique()
    first = await asyncio.wait_for((await rig.pipeline.admit(principal("a"), ask(prompt))).answer(), 5)
    meanwhile = await asyncio.wait_for((await rig.pipeline.admit(principal("b"), ask(prompt))).answer(), 5)
    release.set()
    assert (first.source, meanwhile.source) == ("model", "model")
    assert (first.charged_tokens, meanwhile.charged_tokens) == (12, 12)
    assert len(rig.model.requests) == 2


async def test_the_generation_is_cancelled_when_its_last_follower_leaves(rig: Rig) -> None:
    prompt = unique()
    first = (await rig.pipeline.admit(principal("a"), ask(prompt))).events()
    second = (await rig.pipeline.admit(principal("b"), ask(prompt))).events()
    seen_first = [await anext(first), await anext(first)]
    # A follower that joins once text is flowing is not told of the queue it never waited in.
    seen_second = [await anext(second)]
    assert [type(e) for e in seen_first] == [Queued, Delta] and seen_second == seen_first[1:]
    assert len(rig.model.requests) == 1
    await first.aclose()
    await asyncio.sleep(0.1)
    assert rig.model.cancelled == 0  # the other one still follows it
    await second.aclose()
    for _ in range(50):
        if rig.model.cancelled:
            break
        await asyncio.sleep(0.05)
    assert rig.model.cancelled == 1 and rig.model.finished == 0
    assert await slots_in_use(rig, "a") == 0 and await slots_in_use(rig, "b") == 0
    await rig.pipeline.drain()
    # What each user was shown is kept, marked as cut off.
    assert sorted((e.owner_id, e.response) for e in await rig.stored()) == sorted(
        (user, seen_first[1].text)
        for user in ("a", "b")  # type: ignore[union-attr]
    )


async def test_a_stream_ends_with_the_whole_answer(rig: Rig) -> None:
    rig.model.gate.set()
    prompt = unique()
    events = [e async for e in (await rig.pipeline.admit(principal(), ask(prompt))).events()]
    assert isinstance(events[0], Queued)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == f"echo: {prompt}"
    assert isinstance(events[-1], Answer) and events[-1].text == f"echo: {prompt}"
    assert events[-1].finish_reason == "stop"


# --- context -----------------------------------------------------------------------------------------------


def conversation(owner: str, turns: list[tuple[str, str]]) -> history_pb2.Conversation:
    return history_pb2.Conversation(
        summary=history_pb2.ConversationSummary(id="c1", owner_id=owner),
        messages=[history_pb2.Message(id=f"m{i}", prompt=p, response=r) for i, (p, r) in enumerate(turns)],
    )


async def test_context_keeps_the_newest_turns_that_fit_the_models_window_by_token_count(rig: Rig) -> None:
    rig.model.gate.set()
    # 1 token per character, a 400-token window, 100 tokens for the answer: 300 for the request and context.
    turns = [("old " * 20, "a" * 70), ("mid " * 10, "b" * 40), ("new " * 10, "c" * 40)]
    rig.history.conversations["c1"] = conversation("u1", turns)
    ticket = await rig.pipeline.admit(principal(), ask("next question", conversation_id="c1", max_tokens=100))
    await ticket.answer()
    sent = [m.content for m in rig.model.requests[-1].messages]
    # The newest two turns fit (each 80 characters + 2 x 8 overhead), the oldest (150 + 16) does not.
    assert sent == ["mid " * 10, "b" * 40, "new " * 10, "c" * 40, "next question"]


async def test_context_falls_back_to_characters_without_a_tokenizer(rig: Rig) -> None:
    rig.model.gate.set()
    rig.model.chars_per_token = None
    rig.history.conversations["c1"] = conversation("u1", [("old " * 20, "a" * 70), ("new", "c")])
    await (await rig.pipeline.admit(principal(), ask("q", conversation_id="c1", max_tokens=100))).answer()
    assert len(rig.model.requests[-1].messages) == 5


async def test_someone_elses_conversation_is_not_found(rig: Rig) -> None:
    rig.history.conversations["c1"] = conversation("owner", [("p", "r")])
    ticket = await rig.pipeline.admit(principal("intruder"), ask("q", conversation_id="c1"))
    with pytest.raises(ApiError) as missing:
        await ticket.answer()
    assert missing.value.status == 404 and missing.value.code == "conversation_not_found"
    assert await slots_in_use(rig, "intruder") == 0


# --- afterwards ----------------------------------------------------------------------------------------------


async def test_with_history_down_the_answer_is_given_and_the_exchange_spooled(
    rig: Rig, redis_client: redis.Redis
) -> None:
    rig.model.gate.set()
    rig.history.down = True
    answer = await (await rig.pipeline.admit(principal(), ask(unique()))).answer()
    assert answer.source == "model" and answer.conversation_id
    await rig.pipeline.recorder.flush()
    assert rig.pipeline.recorder.failing and await rig.pipeline.recorder.pending() == 1
    rig.history.down = False
    assert await rig.pipeline.recorder.drain_once() == 1
    (stored,) = rig.history.appended
    assert stored.conversation_id == answer.conversation_id


async def test_with_the_spool_full_new_questions_wait_and_nothing_is_dropped(
    rig: Rig, redis_client: redis.Redis
) -> None:
    rig.model.gate.set()
    rig.history.down = True
    rig.pipeline.recorder.max_spooled = 1
    try:
        await (await rig.pipeline.admit(principal(), ask(unique()))).answer()
        await rig.pipeline.recorder.flush()
        with pytest.raises(ApiError) as refused:
            await rig.pipeline.admit(principal(), ask(unique()))
        assert refused.value.status == 503 and "history" in refused.value.message
        assert refused.value.headers["Retry-After"]
        assert await slots_in_use(rig) == 0 and await rig.pipeline.recorder.pending() == 1
        rig.history.down = False
        assert await rig.pipeline.recorder.drain_once() == 1
        await (await rig.pipeline.admit(principal(), ask(unique()))).answer()
    finally:
        rig.pipeline.recorder.max_spooled = 100_000
        rig.history.down = False


async def test_a_whole_request_cancelled_by_its_caller_frees_the_model_and_the_slot(rig: Rig) -> None:
    ticket = await rig.pipeline.admit(principal(), ask(unique()))
    task = asyncio.ensure_future(ticket.answer())
    await _until_generating(rig)
    assert len(rig.model.requests) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if rig.model.cancelled:
            break
        await asyncio.sleep(0.05)
    assert rig.model.cancelled == 1 and await slots_in_use(rig) == 0
