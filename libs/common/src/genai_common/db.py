"""PostgreSQL: the connection pool and numbered SQL migrations applied once, under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

logger = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release beyond asyncpg's rollback of an open transaction: nothing.

    The project changes session state only inside a transaction (SET LOCAL, set_config(..., true),
    pg_advisory_xact_lock, cursors), so asyncpg's default reset (advisory unlock, CLOSE ALL, UNLISTEN,
    RESET ALL) would cost one more round trip per query and find nothing to undo.
    """


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10, reset=_keep_session
    )
    assert pool is not None
    return pool


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
