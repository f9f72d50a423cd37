"""The Redis client's pool: bounded, callers wait their turn for a connection, and none is lost."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from genai_common.redis_client import WaitingPool, create_redis


async def test_commands_beyond_the_cap_wait_for_a_connection_instead_of_failing(redis_url: str) -> None:
    client = create_redis(redis_url, timeout_s=10, max_connections=2, pool_timeout_s=10)
    try:
        replies = await asyncio.gather(*(client.ping() for _ in range(50)))
        assert all(replies)
        pool = client.connection_pool
        assert isinstance(pool, WaitingPool)
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) <= 2
    finally:
        await client.aclose()


async def test_a_caller_that_waits_too_long_gets_no_connection_available(redis_url: str) -> None:
    client = create_redis(redis_url, timeout_s=10, max_connections=1, pool_timeout_s=0.2)
    try:
        pool = client.connection_pool
        held = await pool.get_connection()
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.ping()
        await pool.release(held)
        # The timed-out caller left no claim behind: the connection serves the next command.
        assert await client.ping()
        assert len(pool._available_connections) == 1
    finally:
        await client.aclose()


async def test_a_connection_handed_to_a_cancelled_waiter_goes_to_the_next(redis_url: str) -> None:
    client = create_redis(redis_url, timeout_s=10, max_connections=1, pool_timeout_s=10)
    try:
        pool = client.connection_pool
        held = await pool.get_connection()
        first = asyncio.ensure_future(pool.get_connection())
        second = asyncio.ensure_future(pool.get_connection())
        await asyncio.sleep(0)
        await pool.release(held)  # handed to the first waiter...
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        connection = await asyncio.wait_for(second, 5)
        await pool.release(connection)
        assert await client.ping()
        assert len(pool._in_use_connections) == 0
    finally:
        await client.aclose()
