"""Gateway unit-test fixtures: a Redis client on the test run's own Redis, with keys of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from genai_common.redis_client import create_redis


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    # Generous timeouts: the short production ones would make a loaded test machine look like an outage.
    client = create_redis(redis_url, timeout_s=10)
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"
