"""Single-flight across gateway processes: two pipelines ("gateways") with their own flights, sharing the rig
of test_pipeline (fake model and history at the gRPC boundary) and the test run's real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from genai_common.redis_guard import RedisGuard
from genai_gateway import flights
from genai_gateway.errors import ApiError
from genai_gateway.flights import FLIGHTS, Record, SharedFlights
from genai_gateway.pipeline import INTERRUPTED, Answer, AskPipeline, Delta, Event, Ticket

from .test_pipeline import Rig, ask, principal, rig, settings, slots_in_use, unique  # noqa: F401 (fixtures)

__all__ = ["rig", "settings"]

# The gateways' lease: long enough that a loaded machine's late renewal does not lose it (the tests here are
# about following and taking over, not about a lease running out by accident).
LEASE_S = 3.0
# The lease of a leader a test plays dead: its end is what a follower waits for.
DEAD_LEASE_S = 1.0


@pytest.fixture
async def gateways(rig: Rig, redis_client: redis.Redis) -> AsyncIterator[tuple[AskPipeline, AskPipeline]]:  # noqa: F811
    def gateway() -> AskPipeline:
        shared = SharedFlights(redis_client, redis_client, RedisGuard(), lease_s=LEASE_S, follow_limit_s=30)
        p = rig.pipeline
        return AskPipeline(p.settings, p.model, p.history, p.cache, p.recorder, p.quotas, shared=shared)

    a, b = gateway(), gateway()
    yield a, b
    for pipeline in (a, b):
        await pipeline.drain()


def count(role: str) -> float:
    return FLIGHTS.labels(role)._value.get()


async def until(condition: object, what: str) -> None:
    for _ in range(200):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def leading(gateway: AskPipeline, prompt: str) -> AsyncIterator[Event]:
    """A streamed request that starts the generation for `prompt` on `gateway`, its first event read."""
    events = (await gateway.admit(principal("a"), ask(prompt))).events()
    await anext(events)
    return events


async def streamed(ticket: Ticket) -> tuple[str, Answer]:
    text, answer = "", None
    async for event in ticket.events():
        if isinstance(event, Delta):
            text += event.text
        elif isinstance(event, Answer):
            answer = event
    assert answer is not None
    return text, answer


async def test_identical_requests_on_two_gateways_share_one_generation(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
) -> None:
    a, b = gateways
    prompt = unique()
    followed = count("followed")
    first = await a.admit(principal("user0"), ask(prompt))
    leading = asyncio.ensure_future(streamed(first))
    await until(lambda: len(rig.model.requests) == 1, "the first request generates")
    others = [await (a, b)[i % 2].admit(principal(f"user{i}"), ask(prompt)) for i in range(1, 6)]
    waiting = [asyncio.ensure_future(streamed(t) if i % 3 else t.answer()) for i, t in enumerate(others, 1)]
    await until(lambda: count("followed") >= followed + 1, "the other gateway follows")
    rig.model.gate.set()
    text, answer = await leading
    results = [await w for w in waiting]
    answers = [answer] + [r[1] if isinstance(r, tuple) else r for r in results]
    assert len(rig.model.requests) == 1
    assert {x.text for x in answers} == {text} == {f"echo: {prompt}"}
    assert all(r[0] == text for r in results if isinstance(r, tuple))
    # Charged once, as local joiners are; each caller's exchange is recorded.
    assert sorted(x.charged_tokens for x in answers) == [0, 0, 0, 0, 0, 12]
    assert all(x.total_tokens == 12 and x.source == "model" for x in answers)
    assert len(await rig.stored()) == 6
    for i in range(6):
        assert await slots_in_use(rig, f"user{i}") == 0


async def test_a_stream_that_leads_after_the_answer_was_cached_shows_its_text(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request misses the cache a moment before another gateway's identical generation caches its answer
    and lets go of its claim; it then leads, finds the answer in the cache, and streams it like a hit."""
    a, b = gateways
    rig.model.gate.set()
    prompt = unique()
    text, first = await streamed(await a.admit(principal("a"), ask(prompt)))
    assert text == first.text == f"echo: {prompt}"
    # Its flight has cached the answer and let go of its claim.
    await until(lambda: not a._flights, "the first flight ends")
    get = b.cache.get
    looked = 0

    async def missed_once(key: str, *args: object, **kwargs: object) -> object:
        nonlocal looked
        looked += 1
        return None if looked == 1 else await get(key, *args, **kwargs)

    monkeypatch.setattr(b.cache, "get", missed_once)
    text, second = await streamed(await b.admit(principal("b"), ask(prompt)))
    assert (text, second.text, second.source) == (first.text, first.text, "cache")
    assert len(rig.model.requests) == 1 and second.charged_tokens == 0


async def test_a_follower_takes_over_from_a_leader_that_died(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
    redis_client: redis.Redis,
) -> None:
    _, b = gateways
    rig.model.gate.set()
    whole = await b.admit(principal("w"), ask(prompt := unique()))
    stream = await b.admit(principal("s"), ask(prompt))
    key = b._key(principal(), whole.generation, whole.generation.messages or [])
    # A leader that showed a piece and died: its lease runs out without a last record.
    lease, record, _ = SharedFlights._names(key, "dead")
    await redis_client.set(lease, "dead", px=int(DEAD_LEASE_S * 1000))
    await redis_client.xadd(record, {"r": Record("d", {"t": "half an ans", "c": []}).encode()})
    took_over = count("took_over")
    answering, streaming = asyncio.ensure_future(whole.answer()), asyncio.ensure_future(streamed(stream))
    answer = await answering
    with pytest.raises(ApiError) as interrupted:
        await streaming
    # The whole answer is the new generation's; a stream that showed the dead one's piece says so.
    assert answer.text == f"echo: {prompt}" and answer.charged_tokens == 12
    assert interrupted.value.status == 503 and interrupted.value.message == INTERRUPTED
    assert len(rig.model.requests) == 1 and count("took_over") == took_over + 1
    assert await slots_in_use(rig, "w") == 0 and await slots_in_use(rig, "s") == 0
    await redis_client.delete(record)


async def _followed_after_its_callers_left(
    rig: Rig, gateways: tuple[AskPipeline, AskPipeline], wait_s: float
) -> None:  # noqa: F811
    """A leads, B follows, A's caller leaves: after `wait_s` the generation still runs, and B gets it."""
    a, b = gateways
    prompt = unique()
    leader = await leading(a, prompt)
    follower = asyncio.ensure_future((await b.admit(principal("b"), ask(prompt))).answer())
    await until(lambda: a._flights and next(iter(a._flights.values())).publisher.remote_followers, "followed")  # type: ignore[union-attr]
    await leader.aclose()
    await asyncio.sleep(wait_s)
    assert rig.model.cancelled == 0
    rig.model.gate.set()
    answer = await follower
    assert answer.text == f"echo: {prompt}" and answer.charged_tokens == 0
    assert len(rig.model.requests) == 1


async def test_a_leader_whose_callers_left_goes_on_while_another_gateway_follows(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
) -> None:
    await _followed_after_its_callers_left(rig, gateways, LEASE_S)


async def test_a_leader_whose_callers_left_goes_on_for_a_follower_longer_than_a_records_lifetime(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The followers' count lives as long as its leader: a follower that is always given something to read
    never renews it itself, and a count that ran out would stop the generation it still follows."""
    # Longer than the leader's renewals (a third of the lease), as in production (60 s against 1 s).
    monkeypatch.setattr(flights, "RECORD_TTL_S", 1.5)
    # Three lifetimes of a record, with the leader publishing as it goes and the follower reading it.
    await _followed_after_its_callers_left(rig, gateways, 3 * flights.RECORD_TTL_S)
    b = gateways[1]
    # The follower left, and its count is not left behind without an expiry.
    await b.drain()
    await asyncio.sleep(0.1)
    counts = [k async for k in redis_client.scan_iter(match="flight:v1:*:followers")]
    assert [await redis_client.pttl(k) > 0 for k in counts] == [True] * len(counts)


async def test_the_generation_is_cancelled_when_its_last_follower_anywhere_leaves(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
) -> None:
    a, b = gateways
    prompt = unique()
    leader = await leading(a, prompt)
    follower = (await b.admit(principal("b"), ask(prompt))).events()
    await anext(follower)  # the queue position, relayed
    await follower.aclose()
    await leader.aclose()
    await until(lambda: rig.model.cancelled == 1, "the generation is cancelled")
    assert rig.model.finished == 0 and len(rig.model.requests) == 1


async def test_with_redis_unavailable_each_gateway_generates_alone(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
) -> None:
    a, b = gateways
    for pipeline in (a, b):
        assert pipeline.shared is not None
        pipeline.shared.guard.failed(ConnectionError("down"))
    prompt = unique()
    tickets = [await p.admit(principal(f"u{i}"), ask(prompt)) for i, p in enumerate((a, b))]
    answering = [asyncio.ensure_future(t.answer()) for t in tickets]
    # Neither waits for the other: each generates, and both are answered.
    await until(lambda: len(rig.model.requests) == 2, "each gateway generates")
    rig.model.gate.set()
    answers = [await x for x in answering]
    assert {x.text for x in answers} == {f"echo: {prompt}"}
    assert count("alone") >= 2


async def test_a_regenerate_joins_nothing_and_is_joined_by_nothing(
    rig: Rig,  # noqa: F811
    gateways: tuple[AskPipeline, AskPipeline],
) -> None:
    a, b = gateways
    prompt = unique()
    normal = asyncio.ensure_future((await a.admit(principal("a"), ask(prompt))).answer())
    await until(lambda: len(rig.model.requests) == 1, "the first generates")
    regenerated = [
        asyncio.ensure_future((await p.admit(principal("b"), ask(prompt, no_cache=True))).answer())
        for p in (a, b)
    ]
    await until(lambda: len(rig.model.requests) == 3, "each regenerate generates")
    rig.model.gate.set()
    answers = [await normal, *[await r for r in regenerated]]
    assert [x.charged_tokens for x in answers] == [12, 12, 12]
