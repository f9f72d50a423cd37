"""One Redis client per process, with short timeouts so a dead Redis never hangs a request.

Every command is timed and its failures counted (`genai_redis_command_seconds`,
`genai_redis_errors_total`), labelled by command name (the few the code uses) and failure class.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter, Histogram
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from genai_common.metrics import DEPENDENCY_BUCKETS

COMMAND_SECONDS = Histogram(
    "genai_redis_command_seconds",
    "Time of a Redis command, failed ones included, by command",
    ["command"],
    buckets=DEPENDENCY_BUCKETS,
)
ERRORS = Counter(
    "genai_redis_errors_total", "Redis commands that failed, by command and error class", ["command", "error"]
)

# Each command's timer by the name as the client passes it ("GET", "EVALSHA", ...): every command would
# otherwise decode its name and look its child up under the metric's lock. The code uses a few names.
_TIMERS: dict[object, Histogram] = {}


class TimedRedis(redis.Redis):
    """redis.asyncio.Redis that times each command. Pipelines and scripts in a pipeline count as one."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0] if args else "?"
        timer = _TIMERS.get(name)
        if timer is None:
            timer = _TIMERS[name] = COMMAND_SECONDS.labels(_command(name))
        started = time.perf_counter()
        try:
            return await super().execute_command(*args, **options)
        except BaseException as exc:
            if isinstance(exc, Exception):
                ERRORS.labels(_command(name), type(exc).__name__).inc()
            raise
        finally:
            timer.observe(time.perf_counter() - started)


def _command(name: Any) -> str:
    return (name.decode() if isinstance(name, bytes) else str(name)).split(" ", 1)[0].upper()


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
        # Once, on a new connection, after a connection error: after Redis restarts, the pool still holds
        # sockets the old server closed, and the first command on each would otherwise fail and mark Redis
        # down again for a cool-down. A timeout is not retried: a hung Redis still costs one timeout.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return TimedRedis(connection_pool=pool)
