"""The seeds' 30 requests per minute per user: exact under concurrency, 429 with Retry-After beyond."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.harness import RunningStack, User


@pytest.fixture
def warm_prompt(live: RunningStack) -> str:
    """A prompt already in the cache, so that the limit, not the model, is what these tests exercise."""
    prompt = f"What is a shell? ({uuid.uuid4().hex[:6]})"
    warmer = live.new_user()
    with live.client() as client:
        response = client.post("/ask", json={"prompt": prompt, "max_tokens": 4}, headers=warmer.headers)
    assert response.status_code == 200
    return prompt


def test_31st_ask_within_a_minute_gets_429(live: RunningStack, user: User, warm_prompt: str) -> None:
    with live.client() as client:
        for i in range(30):
            response = client.post(
                "/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=user.headers
            )
            assert response.status_code == 200, (i, response.text)
            assert response.headers["x-ratelimit-limit"] == "30"
            assert response.headers["x-ratelimit-remaining"] == str(29 - i)
        over = client.post("/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=user.headers)
    assert over.status_code == 429
    assert 1 <= int(over.headers["retry-after"]) <= 60
    assert over.headers["x-ratelimit-remaining"] == "0"
    assert "rate limit" in over.json()["detail"]


async def test_40_concurrent_asks_admit_exactly_30(live: RunningStack, user: User, warm_prompt: str) -> None:
    async with live.async_client() as client:
        responses = await asyncio.gather(
            *(
                client.post("/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=user.headers)
                for _ in range(40)
            )
        )
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 30
    assert codes.count(429) == 10


def test_limits_are_per_user(live: RunningStack, warm_prompt: str) -> None:
    first, second = live.new_user(), live.new_user()
    with live.client() as client:
        for _ in range(30):
            client.post("/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=first.headers)
        assert (
            client.post(
                "/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=first.headers
            ).status_code
            == 429
        )
        ok = client.post("/ask", json={"prompt": warm_prompt, "max_tokens": 4}, headers=second.headers)
    assert ok.status_code == 200
