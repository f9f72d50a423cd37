"""One Redis client per process, with short timeouts so a dead Redis never hangs a request.

Every command is timed and its failures counted (`genai_redis_command_seconds`,
`genai_redis_errors_total`), labelled by command name (the few the code uses) and failure class.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter, Histogram
from redis.asyncio.connection import AbstractConnection
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


class WaitingPool(redis.ConnectionPool):
    """At most `max_connections`; a caller that finds all busy waits up to `timeout` s for one, as with
    redis-py's BlockingConnectionPool, whose "No connection available." it raises after that.

    Written here because every Redis command takes a connection and gives it back: BlockingConnectionPool
    does so under an asyncio.Condition and a timer, and both pools await their observability hooks, each
    time. Here a free connection is taken and given back directly (one event loop: nothing runs between
    the check and the take); only a caller that finds none waits, on a future of its own, handed the next
    connection given back, in arrival order. What is kept: each connection is checked before use
    (`ensure_connection`: connected, nothing unread left on it).
    """

    def __init__(self, *, timeout: float = 2.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()

    async def get_connection(self, *_args: Any, **_options: Any) -> AbstractConnection:
        if self._available_connections:
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
        elif len(self._in_use_connections) < self.max_connections:
            connection = self.make_connection()
            self._in_use_connections.add(connection)
        else:
            connection = await self._wait()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _wait(self) -> AbstractConnection:
        """The next connection given back (`release` hands it over, still counted in use)."""
        waiter: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection in the same moment as the timeout or a cancel: passed on, not lost.
                await self.release(waiter.result())
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise RedisConnectionError("No connection available.") from exc
            raise

    async def release(self, connection: AbstractConnection) -> None:
        if connection.should_reconnect():
            await connection.disconnect()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._in_use_connections.discard(connection)
        self._available_connections.append(connection)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # Nobody is left waiting for a pool that is closing.
        while self._waiters:
            self._waiters.popleft().cancel()


def create_redis(
    url: str, timeout_s: float = 0.5, max_connections: int = 64, pool_timeout_s: float = 2.0
) -> redis.Redis:
    """A client whose pool waits (up to `pool_timeout_s`) for a free connection when all are busy
    (`WaitingPool`).

    `timeout_s` bounds each connect and each answer: a dead or stopped Redis costs at most that.

    The default pool raises "Too many connections" at its cap instead, which under a burst of
    concurrent requests turns into spurious Redis failures.
    """
    pool = WaitingPool.from_url(
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
