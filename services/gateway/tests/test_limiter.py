"""The per-user rate limit against a real Redis: exact under concurrency, with the right headers."""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from genai_common.redis_client import create_redis
from genai_gateway.limiter import RateLimiter


async def test_200_concurrent_hits_admit_exactly_the_limit(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    limiter = RateLimiter(redis_client, limit=50, window_s=60, prefix=key_prefix)
    decisions = await asyncio.gather(*(limiter.hit("user:a") for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


async def test_two_limiters_share_one_count(redis_url: str, key_prefix: str) -> None:
    # Two clients stand for two gateway processes: the count lives in Redis, not in either of them.
    first, second = create_redis(redis_url), create_redis(redis_url)
    try:
        a = RateLimiter(first, limit=10, window_s=60, prefix=key_prefix)
        b = RateLimiter(second, limit=10, window_s=60, prefix=key_prefix)
        decisions = await asyncio.gather(*(lim.hit("user:x") for lim in [a, b] * 15))
    finally:
        await first.aclose()
        await second.aclose()
    assert sum(d.allowed for d in decisions) == 10


async def test_refusal_says_when_to_retry(redis_client: redis.Redis, key_prefix: str) -> None:
    limiter = RateLimiter(redis_client, limit=2, window_s=30, prefix=key_prefix)
    await limiter.hit("u")
    await limiter.hit("u")
    refused = await limiter.hit("u")
    assert not refused.allowed
    headers = refused.headers()
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(headers["Retry-After"]) <= 30


async def test_keys_are_independent(redis_client: redis.Redis, key_prefix: str) -> None:
    limiter = RateLimiter(redis_client, limit=1, window_s=60, prefix=key_prefix)
    assert (await limiter.hit("user:1")).allowed
    assert not (await limiter.hit("user:1")).allowed
    assert (await limiter.hit("user:2")).allowed


async def test_window_slides(redis_client: redis.Redis, key_prefix: str) -> None:
    limiter = RateLimiter(redis_client, limit=1, window_s=1, prefix=key_prefix)
    assert (await limiter.hit("u")).allowed
    assert not (await limiter.hit("u")).allowed
    await asyncio.sleep(1.1)
    assert (await limiter.hit("u")).allowed


async def test_redis_down_admits(key_prefix: str) -> None:
    from genai_devstack.infra import free_port

    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        decision = await RateLimiter(dead, limit=1, window_s=60, prefix=key_prefix).hit("u")
    finally:
        await dead.aclose()
    assert decision.allowed
