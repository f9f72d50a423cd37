"""The answer cache: keys cover what shapes an answer; entries round-trip through real Redis."""

from __future__ import annotations

import redis.asyncio as redis
from prometheus_client import REGISTRY

from genai_common.redis_client import create_redis
from genai_common.redis_guard import RedisGuard
from genai_gateway.cache import AnswerCache, CachedAnswer, cache_key, cache_redis_guard

MESSAGES = [{"role": "user", "content": "How do I list files?"}]


def test_key_depends_on_model_messages_and_parameters() -> None:
    base = cache_key("m", MESSAGES, {"max_tokens": 16})
    assert base == cache_key("m", [dict(m) for m in MESSAGES], {"max_tokens": 16})
    assert base != cache_key("other", MESSAGES, {"max_tokens": 16})
    assert base != cache_key("m", MESSAGES, {"max_tokens": 17})
    assert base != cache_key("m", [{"role": "user", "content": "How do I list files"}], {"max_tokens": 16})
    assert base != cache_key("m", MESSAGES, {"max_tokens": 16}, scope="user-1")


def test_whitespace_always_and_case_by_setting() -> None:
    a = [{"role": "user", "content": "Как исправить ошибку Permission denied?"}]
    b = [{"role": "user", "content": "как исправить  ошибку permission denied?"}]
    spaced = [{"role": "user", "content": "  Как исправить\tошибку Permission  denied? "}]
    assert cache_key("m", a, {}) == cache_key("m", spaced, {})
    assert cache_key("m", a, {}) != cache_key("m", b, {})
    assert cache_key("m", a, {}, case_insensitive=True) == cache_key("m", b, {}, case_insensitive=True)


async def test_round_trip_and_ttl(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = AnswerCache(redis_client, ttl_s=120)
    key = f"{key_prefix}:{cache_key('m', MESSAGES, {})}"
    assert await cache.get(key) is None
    answer = CachedAnswer(
        text="ls -la", model="m", prompt_tokens=5, completion_tokens=3, finish_reason="stop"
    )
    await cache.put(key, answer)
    assert await cache.get(key) == answer
    assert 0 < await redis_client.ttl(key) <= 120


async def test_disabled_cache_stores_nothing(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = AnswerCache(redis_client, ttl_s=120, enabled=False)
    await cache.put(f"{key_prefix}:k", CachedAnswer(text="x", model="m"))
    assert await redis_client.exists(f"{key_prefix}:k") == 0


async def test_a_redis_that_fails_is_a_miss_and_an_answer_not_stored_never_an_error() -> None:
    dead = create_redis("redis://127.0.0.1:1/0", timeout_s=0.2)
    cache = AnswerCache(dead, 60, guard=RedisGuard(cooldown_s=60))
    try:
        await cache.put("cache:v1:gone", CachedAnswer(text="hi", model="m"))
        assert cache.guard.degraded
        # Cooling off: not even tried.
        assert await cache.get("cache:v1:gone") is None
    finally:
        await dead.aclose()


def test_a_cache_redis_of_its_own_has_a_guard_of_its_own() -> None:
    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name)

    state = RedisGuard()
    assert cache_redis_guard(state, separate=False) is state
    own = cache_redis_guard(state, separate=True)
    assert own is not state
    own.failed(ConnectionError("refused"))
    # A cache outage is not a state outage: the failure policy (and genai_redis_up) stays out of it.
    assert own.degraded and not state.degraded
    assert sample("genai_gateway_cache_redis_up") == 0 and sample("genai_redis_up") == 1
    own.succeeded()
    assert sample("genai_gateway_cache_redis_up") == 1
