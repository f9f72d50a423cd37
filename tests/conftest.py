"""The integration tests' stack: real PostgreSQL, Redis, nginx, llama.cpp with SmolLM2 and the four services."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch


@contextlib.contextmanager
def _own_database(postgres_server: infra.Service) -> Iterator[str]:
    """A database of the stack's own: unit tests in the same run write users of their own elsewhere."""
    url = databases.create_database(postgres_server.url)
    try:
        yield url
    finally:
        databases.drop_database(postgres_server.url, url.rsplit("/", 1)[1].split("?")[0])


@pytest.fixture(scope="session")
def live(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[RunningStack]:
    """The stack on llama.cpp with SmolLM2: a real model, for end-to-end behaviour."""
    with _own_database(postgres_server) as database:
        running = launch(work_dir, database, redis_url)
        try:
            yield running
        finally:
            running.stop_all()


# The simulator's pace for the streaming tests: 20 tokens, 50 ms apart.
SIM_ITL_MS = 50
SIM_OUTPUT_TOKENS = 20


@pytest.fixture(scope="session")
def sim_stack(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[RunningStack]:
    """The stack on the vLLM simulator: known timing, fault injection, and a view of what reached it."""
    with _own_database(postgres_server) as database:
        running = launch(
            work_dir,
            database,
            # A Redis database of its own: two deployments on one Redis database would share the
            # history spool (and each drain the other's exchanges into its own history).
            redis_url.rsplit("/", 1)[0] + "/1",
            upstream="sim",
            upstream_args=["--itl-ms", str(SIM_ITL_MS), "--output-tokens", str(SIM_OUTPUT_TOKENS)],
            name="sim-stack",
            # The simulator echoes no meaning: the similar-request layer (and its model) is tested on `live`.
            overrides={"GENAI_GATEWAY_SIMILAR_ENABLED": "false"},
        )
        try:
            yield running
        finally:
            running.stop_all()


@pytest.fixture
def user(live: RunningStack) -> User:
    return live.new_user()
