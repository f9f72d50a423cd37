"""The integration tests' stack: real PostgreSQL, Redis, nginx, llama.cpp with SmolLM2 and the four services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunningStack, User, launch


@pytest.fixture(scope="session")
def live(work_dir: Path, postgres_dsn: str, redis_url: str) -> Iterator[RunningStack]:
    running = launch(work_dir, postgres_dsn, redis_url)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
def user(live: RunningStack) -> User:
    return live.new_user()
