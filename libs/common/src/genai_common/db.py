"""PostgreSQL: the connection pool and numbered SQL migrations applied once, under an advisory lock."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
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
# How often `watch_pool` probes the database, and how long a probe may take.
PROBE_INTERVAL_S = 15.0
PROBE_TIMEOUT_S = 5.0

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


async def probe(pool: asyncpg.Pool) -> bool:
    """One look at the database: `genai_postgres_up` and the database's size. Never raises."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            size = await pool.fetchval("SELECT pg_database_size(current_database())")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        logger.debug("PostgreSQL probe failed: %s", type(exc).__name__)
        POSTGRES_UP.set(0)
        return False
    POSTGRES_UP.set(1)
    DATABASE_BYTES.set(int(size))
    return True


async def watch_pool(pool: asyncpg.Pool, interval_s: float = PROBE_INTERVAL_S) -> None:
    """Probe the database every `interval_s` until cancelled: a down database shows even when idle."""
    up = True
    while not pool.is_closing():
        now_up = await probe(pool)
        if now_up != up:
            logger.warning("PostgreSQL %s", "answers again" if now_up else "does not answer")
            up = now_up
        await asyncio.sleep(interval_s)


# One lock for every component: they share the bookkeeping table, whose creation must not race.
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
