"""The similar-request layer against a real Redis: remember, find, refuse, expire, purge, configure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from genai_common.redis_client import create_redis
from genai_common.redis_guard import RedisGuard
from genai_gateway import similar as similar_module
from genai_gateway.similar import Embedder, SimilarLayer, eligible

PARAMS = {"max_tokens": 64}


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[Embedder]:
    model = Embedder()
    await model.start()
    yield model
    model.close()


@pytest.fixture
async def layer(
    redis_client: redis.Redis, key_prefix: str, embedder: Embedder
) -> AsyncIterator[SimilarLayer]:
    similar = SimilarLayer(
        redis_client, 60, threshold=0.95, word_threshold=0.88, embedder=embedder, prefix=f"{key_prefix}:sim:"
    )
    yield similar
    await similar.purge()
    await redis_client.delete(similar.config_key)


async def remember(layer: SimilarLayer, text: str, key: str, *, model: str = "m", scope: str = "") -> None:
    probe = await layer.probe(text, model, PARAMS, scope)
    assert probe is not None
    await layer.add(probe, key)


async def find(layer: SimilarLayer, text: str, *, model: str = "m", scope: str = "", params=PARAMS):
    probe = await layer.probe(text, model, params, scope)
    assert probe is not None
    return await layer.lookup(probe)


async def test_a_paraphrase_is_found_with_its_similarity(layer: SimilarLayer) -> None:
    await remember(layer, "Как очистить кэш в браузере Chrome?", "cache:v1:aaa")
    match = await find(layer, "Как в Chrome почистить кэш браузера?")
    assert match is not None
    assert match.answer_key == "cache:v1:aaa"
    assert 0.95 <= match.similarity <= 1.0


async def test_another_detail_model_parameters_or_scope_is_not(layer: SimilarLayer) -> None:
    await remember(layer, "Сколько будет 17 умножить на 23?", "cache:v1:bbb", scope="s")
    assert await find(layer, "Чему равно 17 умножить на 23?", scope="s") is not None
    assert await find(layer, "Чему равно 17 умножить на 24?", scope="s") is None
    assert await find(layer, "Чему равно 17 умножить на 23?", scope="other") is None
    assert await find(layer, "Чему равно 17 умножить на 23?", scope="s", model="other") is None
    assert await find(layer, "Чему равно 17 умножить на 23?", scope="s", params={"max_tokens": 65}) is None


async def test_a_substituted_word_must_mean_the_same(layer: SimilarLayer) -> None:
    await remember(layer, "How do I add page numbers in Word?", "cache:v1:ccc")
    assert await find(layer, "How do I add line numbers in Word?") is None


async def test_the_admin_turns_it_off_and_changes_the_threshold(layer: SimilarLayer) -> None:
    await remember(layer, "How do I clear the cache in Chrome?", "cache:v1:ddd")
    await layer.configure(threshold=0.999)
    assert await find(layer, "How can I clear Chrome's browser cache?") is None
    await layer.configure(threshold=0.95)
    assert await find(layer, "How can I clear Chrome's browser cache?") is not None
    assert (await layer.configure(enabled=False)).enabled is False
    assert await layer.probe("How can I clear Chrome's browser cache?", "m", PARAMS, "") is None
    await layer.configure(enabled=True)


async def test_entries_expire_and_purge_forgets_them(
    redis_client: redis.Redis, key_prefix: str, embedder: Embedder, layer: SimilarLayer
) -> None:
    short = SimilarLayer(
        redis_client, 1, threshold=0.95, word_threshold=0.88, embedder=embedder, prefix=f"{key_prefix}:short:"
    )
    await remember(short, "Как подключить второй монитор к ноутбуку?", "cache:v1:eee")
    assert await find(short, "Как подключить второй монитор к ноутбуку, подскажите?") is not None
    await asyncio.sleep(2.1)
    assert await find(short, "Как подключить второй монитор к ноутбуку, подскажите?") is None
    assert [k async for k in redis_client.scan_iter(match=f"{key_prefix}:short:*")] == []

    await remember(layer, "Как подключить второй монитор к ноутбуку?", "cache:v1:fff")
    assert await layer.purge() > 0
    assert await find(layer, "Как подключить второй монитор к ноутбуку, подскажите?") is None


async def test_an_entry_whose_record_is_gone_leaves_its_buckets(
    redis_client: redis.Redis, layer: SimilarLayer
) -> None:
    await remember(layer, "Why is my laptop so slow?", "cache:v1:ggg")
    await redis_client.delete(f"{layer.prefix}e:ggg")
    assert await find(layer, "Why is my laptop so slow?") is None
    # Emptied sets are deleted by Redis.
    assert [k async for k in redis_client.scan_iter(match=f"{layer.prefix}b:*")] == []


async def test_the_admins_settings_live_with_the_state_and_outlast_its_outage(
    redis_client: redis.Redis,
    redis_url: str,
    key_prefix: str,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another database of the test Redis stands for the state Redis; the index stays on the cache's.
    state = create_redis(redis_url.rsplit("/", 1)[0] + "/3", timeout_s=10)
    state_guard = RedisGuard(cooldown_s=60)
    layer = SimilarLayer(
        redis_client,
        60,
        threshold=0.95,
        word_threshold=0.88,
        embedder=embedder,
        prefix=f"{key_prefix}:sim:",
        guard=RedisGuard(),
        settings_client=state,
        settings_guard=state_guard,
    )
    dead = create_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        await layer.configure(enabled=False)
        assert await state.hget(layer.config_key, "enabled") == b"0"
        assert not await redis_client.exists(layer.config_key)
        assert await layer.probe("How do I clear the cache in Chrome?", "m", PARAMS, "") is None
        await layer.configure(enabled=True)
        await remember(layer, "How do I clear the cache in Chrome?", "cache:v1:hhh")
        assert [k async for k in redis_client.scan_iter(match=f"{layer.prefix}e:*")]
        assert not [k async for k in state.scan_iter(match=f"{layer.prefix}e:*")]

        # The state Redis fails: look-ups go on with the settings last read; the cache's guard stays clear.
        layer.settings_client = dead
        monkeypatch.setattr(similar_module, "CONFIG_REFRESH_S", 0.0)
        assert await find(layer, "How can I clear Chrome's browser cache?") is not None
        assert state_guard.degraded and not layer.guard.degraded
        # While it cools off it is not asked: still found.
        assert await find(layer, "How can I clear Chrome's browser cache?") is not None
    finally:
        await layer.purge()
        await state.delete(layer.config_key)
        await state.aclose()
        await dead.aclose()


def test_only_a_lone_user_question_is_eligible() -> None:
    assert eligible([{"role": "user", "content": "Hi there"}], extras=False) == "Hi there"
    assert eligible([{"role": "user", "content": "Hi there"}], extras=True) is None
    assert (
        eligible([{"role": "system", "content": "Be terse"}, {"role": "user", "content": "Hi"}], False)
        is None
    )
    assert eligible([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], False) is None
    assert eligible([{"role": "user", "content": "  "}], extras=False) is None
    assert eligible(None, extras=False) is None
