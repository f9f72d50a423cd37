"""Streaming end to end through nginx, against the vLLM simulator at a known pace (see SIM_ITL_MS)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

from tests.conftest import SIM_ITL_MS, SIM_OUTPUT_TOKENS
from tests.harness import RunningStack, User


@pytest.fixture
def sim_user(sim_stack: RunningStack) -> User:
    return sim_stack.new_user()


async def _arrivals(
    stack: RunningStack, user: User, path: str, body: dict[str, object]
) -> list[tuple[float, bytes]]:
    """(seconds since the request, line) for every non-empty SSE line, as the client receives them."""
    out: list[tuple[float, bytes]] = []
    async with stack.async_client() as client:
        started = time.perf_counter()
        async with client.stream("POST", path, json=body, headers=user.headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.strip():
                    out.append((time.perf_counter() - started, line.encode()))
    return out


async def test_first_chunk_arrives_long_before_the_last(sim_stack: RunningStack, sim_user: User) -> None:
    arrivals = await _arrivals(
        sim_stack,
        sim_user,
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": f"stream {uuid.uuid4().hex}"}],
            "stream": True,
            "max_tokens": 64,
        },
    )
    content = [t for t, line in arrivals if b'"content":"' in line and b'"content":""' not in line]
    assert len(content) == SIM_OUTPUT_TOKENS
    # The simulator spaces tokens SIM_ITL_MS apart; a buffering hop would deliver them all at once.
    spread = content[-1] - content[0]
    generation = (SIM_OUTPUT_TOKENS - 1) * SIM_ITL_MS / 1000
    assert spread > 0.5 * generation, (content[0], content[-1])
    # The same request straight to the simulator, for the delay the whole path adds (printed, not asserted).
    direct: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(5):
            started = time.perf_counter()
            body = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
            upstream = f"http://127.0.0.1:{sim_stack.cfg.ports.upstream}/v1/chat/completions"
            async with client.stream("POST", upstream, json=body) as response:
                async for line in response.aiter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        direct.append(time.perf_counter() - started)
                        break
    through = sorted(
        [content[0]]
        + [
            next(
                t
                for t, line in await _arrivals(
                    sim_stack,
                    sim_user,
                    "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": f"again {uuid.uuid4().hex}"}], "stream": True},
                )
                if b'"content":"' in line and b'"content":""' not in line
            )
            for _ in range(4)
        ]
    )
    print(
        f"\nfirst content chunk: through nginx+gateway+adapter median {through[2] * 1000:.1f} ms, "
        f"simulator directly median {sorted(direct)[2] * 1000:.1f} ms "
        f"(added {(through[2] - sorted(direct)[2]) * 1000:.1f} ms); last chunk after {content[-1] * 1000:.0f} ms"
    )
    assert arrivals[-1][1] == b"data: [DONE]"


async def test_ask_streams_too(sim_stack: RunningStack, sim_user: User) -> None:
    arrivals = await _arrivals(
        sim_stack,
        sim_user,
        "/ask",
        {"prompt": f"stream ask {uuid.uuid4().hex}", "stream": True, "max_tokens": 64},
    )
    events = [
        json.loads(line[6:]) for _, line in arrivals if line != b"data: [DONE]" and line.startswith(b"data:")
    ]
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) == SIM_OUTPUT_TOKENS
    done = events[-1]
    assert done["type"] == "done" and done["source"] == "model"
    assert done["response"] == "".join(d["text"] for d in deltas)
    assert done["conversation_id"]


async def test_cached_answer_streams(sim_stack: RunningStack, sim_user: User) -> None:
    prompt = f"cache me {uuid.uuid4().hex}"
    body = {"prompt": prompt, "stream": True}
    first = await _arrivals(sim_stack, sim_user, "/ask", body)
    second = await _arrivals(sim_stack, sim_user, "/ask", body)
    done_first = json.loads(first[-2][1][6:])
    done_second = json.loads(second[-2][1][6:])
    assert done_first["source"] == "model" and done_second["source"] == "cache"
    assert done_second["response"] == done_first["response"]


async def test_client_disconnect_cancels_the_generation(sim_stack: RunningStack, sim_user: User) -> None:
    before = sim_stack.sim_stats()["cancelled"]
    async with sim_stack.async_client() as client:
        body = {"messages": [{"role": "user", "content": f"leave early {uuid.uuid4().hex}"}], "stream": True}
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=sim_user.headers
        ) as response:
            got = 0
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    got += 1
                if got == 3:
                    break  # leaving the block closes the connection mid-stream
    # The simulator sees the cancel a moment after the client leaves: poll its counter, polling the
    # simulator is the only way to observe it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sim_stack.sim_stats()["cancelled"] == before:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert sim_stack.sim_stats()["cancelled"] == before + 1


async def test_second_turn_sends_the_first_to_the_upstream(sim_stack: RunningStack, sim_user: User) -> None:
    first_prompt = f"My name is Ada {uuid.uuid4().hex[:6]}"
    async with sim_stack.async_client() as client:
        first = (await client.post("/ask", json={"prompt": first_prompt}, headers=sim_user.headers)).json()
        second = await client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "What is my name?"}],
                "conversation_id": first["conversation_id"],
            },
            headers=sim_user.headers,
        )
        assert second.status_code == 200, second.text
        assert second.json()["conversation_id"] == first["conversation_id"]
        listing = (
            await client.get(f"/api/v1/history/{first['conversation_id']}", headers=sim_user.headers)
        ).json()
    upstream_messages = sim_stack.sim_stats()["last_requests"][-1]["messages"]
    assert upstream_messages == [
        {"role": "user", "content": first_prompt},
        {"role": "assistant", "content": first["response"]},
        {"role": "user", "content": "What is my name?"},
    ]
    assert [m["prompt"] for m in listing["messages"]] == [first_prompt, "What is my name?"]


async def test_someone_elses_conversation_is_not_found(sim_stack: RunningStack, sim_user: User) -> None:
    other = sim_stack.new_user()
    async with sim_stack.async_client() as client:
        first = (
            await client.post("/ask", json={"prompt": f"secret {uuid.uuid4().hex}"}, headers=sim_user.headers)
        ).json()
        stolen = await client.post(
            "/ask",
            json={"prompt": "continue", "conversation_id": first["conversation_id"]},
            headers=other.headers,
        )
    assert stolen.status_code == 404
    assert stolen.json()["error"]["code"] == "conversation_not_found"


async def test_upstream_error_before_the_first_chunk_is_an_http_error(
    sim_stack: RunningStack, sim_user: User
) -> None:
    sim_stack.stop("upstream")
    try:
        async with sim_stack.async_client() as client:
            response = await client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": f"down {uuid.uuid4().hex}"}], "stream": True},
                headers=sim_user.headers,
            )
        assert response.status_code == 503
        assert "unavailable" in response.json()["error"]["message"]
    finally:
        sim_stack.start("upstream")
        sim_stack.wait_healthy()


async def test_a_stream_its_client_leaves_is_charged_what_it_spent(
    sim_stack: RunningStack, sim_user: User
) -> None:
    # Leaving just before the end must not dodge a token quota: the tokens streamed so far (and the
    # prompt's) are charged when the client goes.
    sim_stack.set_limits(sim_user, tokens_per_minute=10, requests_per_minute=-1)
    prompt = f"leave before the end {uuid.uuid4().hex}"
    async with sim_stack.async_client() as client:
        async with client.stream(
            "POST", "/ask", json={"prompt": prompt, "stream": True}, headers=sim_user.headers
        ) as response:
            assert response.status_code == 200
            got = 0
            async for line in response.aiter_lines():
                if line.startswith("data: {") and json.loads(line[6:]).get("type") == "delta":
                    got += 1
                if got == SIM_OUTPUT_TOKENS - 5:
                    break  # the connection closes mid-answer
        # The partial exchange reaches history once the stream has been settled.
        deadline = time.monotonic() + 15
        recorded = None
        while recorded is None and time.monotonic() < deadline:
            found = await client.get(
                "/api/v1/history/search", params={"q": prompt.rsplit(" ", 1)[1]}, headers=sim_user.headers
            )
            recorded = found.json()["hits"][0] if found.status_code == 200 and found.json()["hits"] else None
            await asyncio.sleep(0.2)
        assert recorded is not None, "the abandoned exchange was not recorded"
        stored = await client.get(f"/api/v1/history/{recorded['conversation_id']}", headers=sim_user.headers)
        usage = stored.json()["messages"][-1]["usage"]
        assert usage["completion_tokens"] == SIM_OUTPUT_TOKENS - 5 and usage["prompt_tokens"] > 0, usage
        # Over the 10 tokens a minute now: the next request is refused by the token limit.
        after = await client.post("/ask", json={"prompt": "and now?"}, headers=sim_user.headers)
    assert after.status_code == 429, after.text
    assert "token limit of 10 tokens per minute" in after.json()["detail"]
