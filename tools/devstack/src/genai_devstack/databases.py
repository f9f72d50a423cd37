"""Creating and dropping whole databases on a PostgreSQL server (fresh one per test run)."""

from __future__ import annotations

import asyncio
import re
import uuid

import asyncpg

from genai_devstack.infra import database_url

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server_url: str, name: str | None = None, *, exist_ok: bool = False) -> str:
    """Create a database (a random name by default) and return its URL."""
    name = name or f"genai_test_{uuid.uuid4().hex[:12]}"
    if not _NAME.match(name):
        raise ValueError(f"unsafe database name: {name!r}")

    async def create() -> None:
        try:
            await _admin(server_url, f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            if not exist_ok:
                raise

    asyncio.run(create())
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"unsafe database name: {name!r}")
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
