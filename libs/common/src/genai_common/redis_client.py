"""One Redis client per process, with short timeouts so a dead Redis never hangs a request."""

from __future__ import annotations

import redis.asyncio as redis


def create_redis(
    url: str, timeout_s: float = 0.5, max_connections: int = 64, pool_timeout_s: float = 2.0
) -> redis.Redis:
    """A client whose pool waits (up to `pool_timeout_s`) for a free connection when all are busy.

    `timeout_s` bounds each connect and each answer: a dead or stopped Redis costs at most that.

    The default pool raises "Too many connections" at its cap instead, which under a burst of
    concurrent requests turns into spurious Redis failures.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)
