"""PostgreSQL: the connection pool and numbered SQL migrations applied once, under an advisory lock."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from pathlib import Path

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from genai_common.metrics import DEPENDENCY_BUCKETS

logger = logging.getLogger(__name__)

QUERY_SECONDS = Histogram(
    "genai_postgres_query_seconds",
    "Time of a PostgreSQL query, failed ones included",
    buckets=DEPENDENCY_BUCKETS,
)
QUERY_ERRORS = Counter(
    "genai_postgres_errors_total", "PostgreSQL queries that failed, by error class", ["error"]
)
POSTGRES_UP = Gauge("genai_postgres_up", "1 while this process's last probe of PostgreSQL succeeded, else 0")
DATABASE_BYTES = Gauge("genai_postgres_database_size_bytes", "Size of the service's database on disk")
# How often `watch_pool` probes the database, and how long a probe may take: often and short enough for
# the service's health (and so the gateway's /health) to follow an outage within a few seconds.
PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
# The database's size changes slowly: read every this many probes.
SIZE_EVERY = 8

# What PostgreSQL being down, hung, restarting or out of connections looks like to asyncpg: refused or
# reset connections and timeouts (OSError, TimeoutError), a connection lost mid-query (class 08), a server
# shutting down, starting up or cancelling the query (class 57), no connection slot left (class 53), a
# pooled connection found closed (InterfaceError), and one that the server dropped half-way through an
# operation ("InternalClientError: cannot switch to state ...; another operation is in progress", seen
# when PostgreSQL stops under load). A service answers these with UNAVAILABLE, not INTERNAL
# (`genai_common.grpc_server.serve`'s `database_errors`): a retry later succeeds, nothing is broken.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


class DatabaseState:
    """Whether this process can use PostgreSQL now, as its probes and its failed queries say.

    Read by the service's health (`grpc.health.v1`, service name "postgres") and so by the gateway's
    /health; set by `watch_pool` every probe, and at once by any query that fails with a DATABASE_ERRORS.
    """

    def __init__(self) -> None:
        self.up = True
        self.since = 0.0
        self.reason = ""

    def failed(self, exc: BaseException) -> None:
        if self.up:
            logger.warning("PostgreSQL does not answer (%s)", type(exc).__name__)
            self.since = time.monotonic()
        self.up = False
        self.reason = type(exc).__name__
        POSTGRES_UP.set(0)

    def succeeded(self) -> None:
        if not self.up:
            logger.warning("PostgreSQL answers again")
        self.up = True
        self.reason = ""
        POSTGRES_UP.set(1)


_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release beyond asyncpg's rollback of an open transaction: nothing.

    The project changes session state only inside a transaction (SET LOCAL, set_config(..., true),
    pg_advisory_xact_lock, cursors), so asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL) would cost one more round trip per query and find nothing to undo.
    """


def _observe_query(query: asyncpg.connection.LoggedQuery) -> None:
    QUERY_SECONDS.observe(query.elapsed)
    if query.exception is not None:
        QUERY_ERRORS.labels(type(query.exception).__name__).inc()


async def _observed(conn: asyncpg.Connection) -> None:
    conn.add_query_logger(_observe_query)


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose every query is timed (`genai_postgres_query_seconds`) and counted when it fails."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10, reset=_keep_session, init=_observed
    )
    assert pool is not None
    return pool


async def probe(pool: asyncpg.Pool, state: DatabaseState | None = None, *, size: bool = True) -> bool:
    """One look at the database: `genai_postgres_up` (and `state`), and the database's size. Never raises."""
    state = state or DatabaseState()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            query = "SELECT pg_database_size(current_database())" if size else "SELECT 1"
            value = await pool.fetchval(query)
    except (*DATABASE_ERRORS, asyncpg.PostgresError) as exc:
        logger.debug("PostgreSQL probe failed: %s", type(exc).__name__)
        state.failed(exc)
        return False
    state.succeeded()
    if size:
        DATABASE_BYTES.set(int(value))
    return True


async def watch_pool(
    pool: asyncpg.Pool, state: DatabaseState | None = None, interval_s: float = PROBE_INTERVAL_S
) -> None:
    """Probe the database every `interval_s` until cancelled: a down database shows even when idle, and
    one that answers again shows without waiting for a request to try it."""
    state = state or DatabaseState()
    count = 0
    while not pool.is_closing():
        await probe(pool, state, size=count % SIZE_EVERY == 0)
        count += 1
        await asyncio.sleep(interval_s)


# One lock for every component. Each service's role keeps its own `schema_migrations` in its own schema
# (genai_common.roles); components that share a schema (the administrator's `public`, as releases before the
# roles had it) share the table, whose creation must not race. genai_common.roles holds it while it moves
# tables, so that no migration runs half-way through a move.
MIGRATION_LOCK_ID = int.from_bytes(hashlib.sha256(b"genai-migrations").digest()[:8], "big", signed=True)


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path))
    versions = [v for v, _, _ in found]
    if len(versions) != len(set(versions)):
        raise RuntimeError(f"duplicate migration numbers in {directory}")
    return found


async def apply_migrations(conn: asyncpg.Connection, component: str, directory: Path) -> list[str]:
    """Apply the not-yet-applied migrations of one component; return the names applied.

    Concurrent starters (several replicas, a one-shot job) serialise on an advisory lock, and each
    migration runs in its own transaction together with its bookkeeping row.
    """
    applied_now: list[str] = []
    lock = MIGRATION_LOCK_ID
    await conn.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                component TEXT NOT NULL,
                version INTEGER NOT NULL,
                name TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (component, version)
            )
            """
        )
        done = {
            row["version"]
            for row in await conn.fetch(
                "SELECT version FROM schema_migrations WHERE component = $1", component
            )
        }
        for version, name, path in migration_files(directory):
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                    component,
                    version,
                    name,
                )
            logger.info("applied migration %s/%s", component, name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    return applied_now


async def migrate(dsn: str, component: str, directory: Path) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations(conn, component, directory)
    finally:
        await conn.close()
