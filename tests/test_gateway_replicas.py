"""Two gateways in front of one stack (issue 13): single-flight and the per-user concurrency cap hold across
them, a follower outlives the gateway that was generating for it, and a stopped Redis costs no answer.

The stack has a Redis of its own (the last test stops it) and a slow simulator: 150 ms a token, so that
requests overlap whenever the tests need them to. Figures are printed, times never asserted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch, wait_for

ITL_MS = 150
# Tokens of the answers the tests wait for (30 x 150 ms: long enough for 20 requests to arrive meanwhile).
ANSWER_TOKENS = 30
# Tokens of the requests the concurrency test holds open (never waited for: they are closed once counted).
HELD_TOKENS = 400


@pytest.fixture(scope="module")
def replicas(work_dir: Path, postgres_server: infra.Service) -> Iterator[tuple[RunningStack, infra.Service]]:
    redis_server = infra.start_local_redis(work_dir / "replicas-redis", infra.free_port())
    database = databases.create_database(postgres_server.url)
    stack = launch(
        work_dir,
        database,
        redis_server.url,
        upstream="sim",
        upstream_args=["--itl-ms", str(ITL_MS), "--output-tokens", str(HELD_TOKENS)],
        name="replicas-stack",
        overrides={"GENAI_GATEWAY_SIMILAR_ENABLED": "false", "GENAI_GATEWAY_MAX_TOKENS_LIMIT": "1000"},
    )
    try:
        stack.start_extra_gateway("gateway-b")
        yield stack, redis_server
    finally:
        stack.stop_all()
        redis_server.stop()
        databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1])


def _url(stack: RunningStack, name: str) -> str:
    port = stack.extra_ports[name] if name in stack.extra_ports else stack.cfg.ports.gateway
    return f"http://127.0.0.1:{port}"


def _started(stack: RunningStack) -> int:
    return int(stack.sim_stats()["started"])  # type: ignore[call-overload]


def _flights(stack: RunningStack, name: str, role: str) -> float:
    return stack.metrics(name).get(("genai_gateway_shared_flights_total", (("role", role),)), 0.0)


async def _whole(client: httpx.AsyncClient, user: User, body: dict[str, object]) -> tuple[int, str]:
    response = await client.post("/ask", json=body, headers=user.headers)
    return response.status_code, response.json().get("response", response.text)


async def _streamed(client: httpx.AsyncClient, user: User, body: dict[str, object]) -> tuple[int, str]:
    """The status and the streamed text, or "error: ..." when the stream ended with an error event."""
    text = ""
    async with client.stream("POST", "/ask", json={**body, "stream": True}, headers=user.headers) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event["type"] == "delta":
                text += event["text"]
            elif event["type"] == "done":
                assert event["response"] == text
            elif event["type"] == "error":
                return response.status_code, f"error: {event['error']['message']}"
    return response.status_code, text


async def test_20_identical_requests_on_two_gateways_make_one_generation(
    replicas: tuple[RunningStack, infra.Service],
) -> None:
    stack, _ = replicas
    users = [stack.new_user() for _ in range(4)]
    body = {"prompt": f"shared {uuid.uuid4().hex}", "max_tokens": ANSWER_TOKENS}
    before = _started(stack)
    async with (
        httpx.AsyncClient(base_url=_url(stack, "gateway"), timeout=60) as a,
        httpx.AsyncClient(base_url=_url(stack, "gateway-b"), timeout=60) as b,
    ):
        results = await asyncio.gather(
            *((_streamed if i % 2 else _whole)((a, b)[i % 4 // 2], users[i % 4], body) for i in range(20))
        )
    generations = _started(stack) - before
    followed = _flights(stack, "gateway", "followed") + _flights(stack, "gateway-b", "followed")
    print(
        f"\n20 identical requests on 2 gateways: {generations} generation(s), {followed:.0f} followed across"
    )
    assert [status for status, _ in results] == [200] * 20
    assert len({text for _, text in results}) == 1
    assert len(results[0][1].split()) == ANSWER_TOKENS
    assert generations == 1
    assert followed >= 1


async def test_the_concurrency_cap_is_exact_across_two_gateways(
    replicas: tuple[RunningStack, infra.Service],
) -> None:
    stack, _ = replicas
    user = stack.new_user()
    stack.set_limits(user, concurrent_requests=50, requests_per_minute=-1)
    # A fresh token: limits are read when the token is checked.
    user.token = stack.login(user.username, user.password)
    # Each request streams a 60 s answer and is held open until all 200 have their status: none ends before
    # every other was admitted or refused, so the count does not depend on timing.
    body = {"prompt": f"held {uuid.uuid4().hex}", "max_tokens": HELD_TOKENS}
    counted = asyncio.Event()
    statuses: list[int] = []

    async def hold(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/ask", json={**body, "stream": True}, headers=user.headers) as r:
            statuses.append(r.status_code)
            if len(statuses) == 200:
                counted.set()
            if r.status_code == 200:
                await counted.wait()

    limits = httpx.Limits(max_connections=200)
    async with (
        httpx.AsyncClient(base_url=_url(stack, "gateway"), timeout=60, limits=limits) as a,
        httpx.AsyncClient(base_url=_url(stack, "gateway-b"), timeout=60, limits=limits) as b,
    ):
        await asyncio.gather(*(hold(client) for client in [a, b] * 100))
    print(
        f"\n200 concurrent on 2 gateways, cap 50: {statuses.count(200)} admitted, {statuses.count(429)} refused"
    )
    assert (statuses.count(200), statuses.count(429)) == (50, 150)
    # Every slot comes back once the streams are closed.
    wait_for(lambda: _admitted_again(stack, user), timeout_s=20, what="the slots are given back")


def _admitted_again(stack: RunningStack, user: User) -> bool:
    with httpx.Client(base_url=_url(stack, "gateway"), timeout=30) as client:
        return bool(
            client.post(
                "/ask", json={"prompt": f"after {uuid.uuid4().hex}", "max_tokens": 1}, headers=user.headers
            ).status_code
            == 200
        )


async def test_followers_outlive_the_gateway_generating_for_them(
    replicas: tuple[RunningStack, infra.Service],
) -> None:
    stack, _ = replicas
    doomed = stack.start_extra_gateway("gateway-doomed")
    user = stack.new_user()
    body = {"prompt": f"orphan {uuid.uuid4().hex}", "max_tokens": ANSWER_TOKENS}
    before = _started(stack)
    first_piece = asyncio.Event()

    async def leader(client: httpx.AsyncClient) -> None:
        # Streams until its gateway dies under it.
        with pytest.raises(httpx.HTTPError):
            async with client.stream(
                "POST", "/ask", json={**body, "stream": True}, headers=user.headers
            ) as r:
                async for line in r.aiter_lines():
                    if '"type":"delta"' in line:
                        first_piece.set()

    async with (
        httpx.AsyncClient(base_url=doomed, timeout=60) as d,
        httpx.AsyncClient(base_url=_url(stack, "gateway"), timeout=60) as a,
    ):
        leading = asyncio.ensure_future(leader(d))
        await first_piece.wait()
        followed = _flights(stack, "gateway", "followed")
        followers = [
            asyncio.ensure_future((_streamed if i % 3 == 0 else _whole)(a, user, body)) for i in range(6)
        ]
        await asyncio.to_thread(
            wait_for,
            lambda: _flights(stack, "gateway", "followed") > followed,
            20,
            "the other gateway follows",
        )
        stack.procs.pop("gateway-doomed").kill()  # SIGKILL: no last record, the lease runs out
        await leading
        results = [await f for f in followers]
    generations = _started(stack) - before
    took_over = _flights(stack, "gateway", "took_over")
    print(f"\nleader killed mid-answer: {generations} generations, followers: {[s for s, _ in results]}")
    whole = [text for i, (_, text) in enumerate(results) if i % 3]
    streamed = [text for i, (_, text) in enumerate(results) if i % 3 == 0]
    assert [status for status, _ in results] == [200] * 6
    # Whole answers are the new generation's, entire; a stream that had shown the dead one's pieces says it
    # was cut (an explicit error event, never a silent truncation).
    assert len(set(whole)) == 1 and len(whole[0].split()) == ANSWER_TOKENS
    assert all(text.startswith("error: the answer was interrupted") for text in streamed)
    assert generations == 2 and took_over >= 1


async def test_with_redis_stopped_identical_requests_are_all_answered(
    replicas: tuple[RunningStack, infra.Service],
) -> None:
    stack, redis_server = replicas
    user = stack.new_user()
    body = {"prompt": f"no redis {uuid.uuid4().hex}", "max_tokens": 5}
    redis_server.stop()
    before = _started(stack)
    async with (
        httpx.AsyncClient(base_url=_url(stack, "gateway"), timeout=60) as a,
        httpx.AsyncClient(base_url=_url(stack, "gateway-b"), timeout=60) as b,
    ):
        results = await asyncio.gather(
            *((_streamed if i % 2 else _whole)((a, b)[i % 4 // 2], user, body) for i in range(8))
        )
    generations = _started(stack) - before
    print(f"\nRedis stopped, 8 identical requests on 2 gateways: {generations} generation(s)")
    assert [status for status, _ in results] == [200] * 8
    assert all(len(text.split()) == 5 for _, text in results)
    assert 1 <= generations <= 8
