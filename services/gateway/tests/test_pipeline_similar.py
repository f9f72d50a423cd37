"""The ask pipeline with the similar-request layer: the rig of test_pipeline (fake model and history at the
gRPC boundary, the test run's real Redis) and the real embedding model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from genai.history.v1 import history_pb2

from genai_gateway.cache import LOOKUPS
from genai_gateway.similar import Embedder, SimilarLayer

from .test_pipeline import Rig, ask, principal, rig, settings  # noqa: F401 (fixtures)

__all__ = ["rig", "settings"]


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[Embedder]:
    model = Embedder()
    await model.start()
    yield model
    model.close()


@pytest.fixture
async def similar_rig(
    rig: Rig,  # noqa: F811
    redis_client: redis.Redis,
    key_prefix: str,
    embedder: Embedder,
) -> AsyncIterator[Rig]:
    layer = SimilarLayer(
        redis_client, 60, threshold=0.95, word_threshold=0.88, embedder=embedder, prefix=f"{key_prefix}:sim:"
    )
    rig.pipeline.similar = layer
    rig.model.gate.set()
    yield rig
    await layer.purge()


def hits() -> float:
    return LOOKUPS.labels("similar", "hit")._value.get()


async def test_a_paraphrase_by_another_user_is_answered_from_the_similar_layer(similar_rig: Rig) -> None:
    pipeline = similar_rig.pipeline
    first = await (await pipeline.admit(principal("a"), ask("Как очистить кэш в браузере Chrome?"))).answer()
    before = hits()
    again = await (await pipeline.admit(principal("b"), ask("Как в Chrome почистить кэш браузера?"))).answer()
    assert (first.source, first.similarity) == ("model", None)
    assert again.source == "cache" and again.text == first.text
    assert again.similarity is not None and 0.95 <= again.similarity <= 1
    assert again.charged_tokens == 0
    assert len(similar_rig.model.requests) == 1
    assert hits() == before + 1
    assert (await similar_rig.stored())[-1].source == "cache"
    # The same question again is the exact cache's: no similarity to tell.
    exact = await (await pipeline.admit(principal("c"), ask("Как очистить кэш в браузере Chrome?"))).answer()
    assert (exact.source, exact.similarity) == ("cache", None)


@pytest.mark.parametrize(
    ("asked", "then"),
    [
        ("Сколько будет 17 умножить на 23?", "Чему равно 17 умножить на 24?"),
        ("Translate 'good morning' into German", "Translate 'good morning' into French"),
        ("Why does my laptop shut down by itself?", "Why doesn't my laptop shut down?"),
    ],
)
async def test_another_number_language_or_negation_goes_to_the_model(
    similar_rig: Rig, asked: str, then: str
) -> None:
    pipeline = similar_rig.pipeline
    await (await pipeline.admit(principal("a"), ask(asked))).answer()
    other = await (await pipeline.admit(principal("b"), ask(then))).answer()
    assert other.source == "model"


async def test_inside_a_conversation_or_with_a_system_prompt_it_goes_to_the_model(similar_rig: Rig) -> None:
    pipeline = similar_rig.pipeline
    await (await pipeline.admit(principal("a"), ask("How do I clear the cache in Chrome?"))).answer()
    similar_rig.history.conversations["conv-1"] = history_pb2.Conversation(
        summary=history_pb2.ConversationSummary(id="conv-1", owner_id="b")
    )
    in_conversation = ask("How can I clear Chrome's browser cache?", conversation_id="conv-1")
    assert (await (await pipeline.admit(principal("b"), in_conversation)).answer()).source == "model"
    with_system = ask("How can I clear Chrome's browser cache?")
    assert with_system.messages is not None
    with_system.messages.insert(0, {"role": "system", "content": "Answer in one word."})
    assert (await (await pipeline.admit(principal("b"), with_system)).answer()).source == "model"


async def test_regenerate_asks_the_model_and_replaces_no_shared_answer(
    similar_rig: Rig, redis_client: redis.Redis, key_prefix: str
) -> None:
    pipeline = similar_rig.pipeline
    first = await (await pipeline.admit(principal("a"), ask("How do I merge cells in Excel?"))).answer()
    entries = [k async for k in redis_client.scan_iter(match=f"{key_prefix}:sim:e:*")]
    similar_rig.model._text = lambda request: "a fresh answer"  # type: ignore[method-assign]
    regenerated = await (
        await pipeline.admit(principal("b"), ask("How do I merge cells in Excel?", no_cache=True))
    ).answer()
    assert regenerated.source == "model" and len(similar_rig.model.requests) == 2
    assert regenerated.text == "a fresh answer" != first.text
    # A paraphrase regenerated is not remembered for others either.
    await (
        await pipeline.admit(principal("b"), ask("How can I merge cells in Excel?", no_cache=True))
    ).answer()
    assert [k async for k in redis_client.scan_iter(match=f"{key_prefix}:sim:e:*")] == entries
    again = await (await pipeline.admit(principal("c"), ask("How do I merge cells in Excel?"))).answer()
    assert again.source == "cache" and again.text == first.text
