"""History test fixtures: a migrated database, a pool, and in-process servers on port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest

from genai_common.db import create_pool, migrate
from genai_history.store import COMPONENT, MIGRATIONS_DIR, HistoryStore

from .support import Stub, make_settings, running_server


@pytest.fixture(scope="session")
async def history_dsn(service_dsns: dict[str, str]) -> str:
    """History's own PostgreSQL role (genai_common.roles), migrated: what production runs as."""
    await migrate(service_dsns["history"], COMPONENT, MIGRATIONS_DIR)
    return service_dsns["history"]


@pytest.fixture(scope="session")
async def pool(history_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    db_pool = await create_pool(history_dsn, max_size=5)
    yield db_pool
    await db_pool.close()


@pytest.fixture(scope="session")
async def stub(pool: asyncpg.Pool, history_dsn: str) -> AsyncIterator[Stub]:
    """A server with the default caps, shared by the tests (each uses its own owners)."""
    async with running_server(HistoryStore(pool), make_settings(history_dsn)) as session_stub:
        yield session_stub


@pytest.fixture
async def start_server(pool: asyncpg.Pool, history_dsn: str) -> AsyncIterator[Callable[..., Awaitable[Stub]]]:
    """Start a server with some caps changed, e.g. `await start_server(max_messages=5)`."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Stub:
            settings = make_settings(history_dsn, **overrides)
            return await stack.enter_async_context(running_server(HistoryStore(pool), settings))

        yield start
