"""The integration tests' stack: real PostgreSQL, Redis, nginx, llama.cpp with SmolLM2 and the four services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch


@pytest.fixture(scope="session")
def stack_database(postgres_server: infra.Service) -> Iterator[str]:
    """A database of the stack's own: unit tests in the same run write users of their own elsewhere."""
    url = databases.create_database(postgres_server.url)
    try:
        yield url
    finally:
        databases.drop_database(postgres_server.url, url.rsplit("/", 1)[1].split("?")[0])


@pytest.fixture(scope="session")
def live(work_dir: Path, stack_database: str, redis_url: str) -> Iterator[RunningStack]:
    running = launch(work_dir, stack_database, redis_url)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def user(live: RunningStack) -> User:
    return live.new_user()
