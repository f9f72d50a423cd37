"""One Redis client per process, with short timeouts so a dead Redis never hangs a request."""

from __future__ import annotations

import redis.asyncio as redis


def create_redis(url: str, timeout_s: float = 0.5) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        decode_responses=False,
    )
