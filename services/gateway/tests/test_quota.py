"""Per-user limits against a real Redis: exact under concurrency, across processes, and when Redis fails."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis
from redis.exceptions import RedisError

from genai_common.redis_client import create_redis
from genai_devstack.infra import free_port
from genai_gateway.errors import ApiError
from genai_gateway.quota import UNLIMITED, LimitSet, Quotas
from genai_gateway.redis_guard import RedisGuard

LOOSE = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=UNLIMITED)


def quotas(client: redis.Redis, prefix: str, **kwargs: object) -> Quotas:
    return Quotas(client, RedisGuard(), {"user": LimitSet()}, slot_ttl_s=60, prefix=prefix, **kwargs)  # type: ignore[arg-type]


async def _outcomes(q: Quotas, subject: str, limits: LimitSet, n: int) -> list[ApiError | object]:
    async def one() -> ApiError | object:
        try:
            return await q.admit(subject, limits)
        except ApiError as error:
            return error

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_200_concurrent_requests_against_50_admit_exactly_50(redis_url: str, key_prefix: str) -> None:
    # Two clients stand for two gateway processes: the counts live in Redis, not in either of them.
    # Generous timeouts: this is about atomicity, and a loaded machine must not turn it into a timeout test.
    first, second = create_redis(redis_url, timeout_s=10), create_redis(redis_url, timeout_s=10)
    try:
        limits = LimitSet(requests_per_minute=50, concurrent_requests=UNLIMITED)
        a, b = quotas(first, key_prefix), quotas(second, key_prefix)
        results = await asyncio.gather(_outcomes(a, "u", limits, 100), _outcomes(b, "u", limits, 100))
    finally:
        await first.aclose()
        await second.aclose()
    flat = results[0] + results[1]
    refused = [r for r in flat if isinstance(r, ApiError)]
    assert len(flat) - len(refused) == 50
    assert all(r.status == 429 and "Retry-After" in r.headers for r in refused)


async def test_concurrency_slots_are_exact_and_given_back(redis_client: redis.Redis, key_prefix: str) -> None:
    q = quotas(redis_client, key_prefix)
    limits = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=3)
    outcomes = await _outcomes(q, "u", limits, 20)
    admitted = [o for o in outcomes if not isinstance(o, ApiError)]
    assert len(admitted) == 3
    assert await q.in_use("u") == 3
    for admission in admitted:
        await q.settle(admission, 0)  # type: ignore[arg-type]
        await q.settle(admission, 0)  # type: ignore[arg-type]  # twice is harmless
    assert await q.in_use("u") == 0
    assert not isinstance((await _outcomes(q, "u", limits, 1))[0], ApiError)


async def test_slots_of_a_dead_gateway_expire(redis_client: redis.Redis, key_prefix: str) -> None:
    # A lifetime far longer than two admissions take, even on a loaded machine.
    q = Quotas(redis_client, RedisGuard(), {}, slot_ttl_s=2, prefix=key_prefix)
    limits = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=1)
    await q.admit("u", limits)  # never released: its gateway "died"
    with pytest.raises(ApiError):
        await q.admit("u", limits)
    await asyncio.sleep(2.1)
    await q.admit("u", limits)


async def test_tokens_per_minute_and_per_day_are_charged_after_answers(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = quotas(redis_client, key_prefix)
    per_minute = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=UNLIMITED, tokens_per_minute=100)
    admission = await q.admit("m", per_minute)
    await q.settle(admission, 100)
    with pytest.raises(ApiError) as refused:
        await q.admit("m", per_minute)
    assert "token limit of 100 tokens per minute" in refused.value.message

    per_day = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=UNLIMITED, tokens_per_day=50)
    admission = await q.admit("d", per_day)
    await q.settle(admission, 60)
    with pytest.raises(ApiError) as refused:
        await q.admit("d", per_day)
    assert "daily token limit" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) <= 86_400


async def test_settling_gives_the_slot_back_and_charges_in_one_go(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = quotas(redis_client, key_prefix)
    limits = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=1, tokens_per_minute=150)
    admission = await q.admit("s", limits)
    with pytest.raises(ApiError):
        await q.admit("s", limits)  # the one slot is taken
    await q.settle(admission, 100)
    await q.settle(admission, 100)  # once per admission: not charged twice
    assert await q.in_use("s") == 0
    second = await q.admit("s", limits)  # 100 of 150 used
    await q.settle(second, 100)
    with pytest.raises(ApiError) as refused:
        await q.admit("s", limits)
    assert "token limit of 150 tokens per minute" in refused.value.message

    # Nothing to charge (a cached answer, a failure): only the slot comes back.
    free = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=1, tokens_per_minute=1)
    admission = await q.admit("f", free)
    await q.settle(admission, 0)
    assert await q.in_use("f") == 0
    await q.settle(await q.admit("f", free), 0)


async def test_settling_can_append_a_record_in_the_same_round_trip(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    q = quotas(redis_client, key_prefix)
    journal = f"{key_prefix}:journal"
    limits = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=1, tokens_per_minute=150)
    admission = await q.admit("j", limits)
    await q.settle_and_append(admission, 100, journal, b"first")
    assert await q.in_use("j") == 0
    assert await redis_client.lrange(journal, 0, -1) == [b"first"]
    # Settled once: a later settle charges nothing more; a second record is still appended.
    await q.settle(admission, 100)
    await q.settle_and_append(admission, 100, journal, b"second")
    assert await redis_client.lrange(journal, 0, -1) == [b"first", b"second"]
    second = await q.admit("j", limits)  # 100 of 150 used, not 200
    await q.settle(second, 0)


async def test_settling_with_a_record_while_redis_fails_settles_here_and_says_so(key_prefix: str) -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        q = Quotas(dead, RedisGuard(), {}, slot_ttl_s=60, prefix=key_prefix)
        limits = LimitSet(requests_per_minute=UNLIMITED, concurrent_requests=UNLIMITED, tokens_per_day=10)
        admission = q.local.admit("u", limits)
        assert not isinstance(admission, ApiError)
        admission.local = False  # admitted by Redis, which failed since
        with pytest.raises(RedisError):
            await q.settle_and_append(admission, 20, f"{key_prefix}:journal", b"record")
        assert admission.released  # the caller keeps the record; the request is not settled again
        # The tokens were charged here instead.
        refused = q.local.admit("u", limits)
        assert isinstance(refused, ApiError) and "daily token limit" in refused.message
    finally:
        await dead.aclose()


def test_overrides_replace_role_defaults(redis_client: redis.Redis, key_prefix: str) -> None:
    q = Quotas(redis_client, RedisGuard(), {"user": LimitSet(requests_per_minute=30)}, slot_ttl_s=60)
    assert q.limits_for("user", "{}").requests_per_minute == 30
    assert q.limits_for("user", '{"requests_per_minute": 5, "tokens_per_day": -1}').requests_per_minute == 5
    # An unknown role gets the user defaults, never no limits.
    assert q.limits_for("guest").requests_per_minute == 30


async def test_redis_down_fail_open_uses_per_process_limits(key_prefix: str) -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        q = Quotas(
            dead, RedisGuard(cooldown_s=60), {}, slot_ttl_s=60, failure_policy="open", prefix=key_prefix
        )
        limits = LimitSet(requests_per_minute=2, concurrent_requests=UNLIMITED)
        await q.admit("u", limits)
        await q.admit("u", limits)
        with pytest.raises(ApiError) as refused:
            await q.admit("u", limits)
        assert refused.value.status == 429
        assert q.guard.degraded
    finally:
        await dead.aclose()


async def test_redis_down_fail_closed_is_503(key_prefix: str) -> None:
    dead = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    try:
        q = Quotas(dead, RedisGuard(), {}, slot_ttl_s=60, failure_policy="closed", prefix=key_prefix)
        with pytest.raises(ApiError) as refused:
            await q.admit("u", LOOSE)
        assert refused.value.status == 503 and "Redis" in refused.value.message
    finally:
        await dead.aclose()


async def test_headers_count_down(redis_client: redis.Redis, key_prefix: str) -> None:
    q = quotas(redis_client, key_prefix)
    limits = LimitSet(requests_per_minute=3, concurrent_requests=UNLIMITED)
    remaining = [(await q.admit("h", limits)).headers()["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
