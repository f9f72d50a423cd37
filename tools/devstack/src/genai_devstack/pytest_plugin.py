"""Fixtures for every test layer: a real PostgreSQL database and a real Redis of the test run's own."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from genai_devstack import databases, infra


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="genai-test-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def postgres_server(work_dir: Path) -> Iterator[infra.Service]:
    with infra.started(infra.postgres_for_tests(work_dir)) as service:
        yield service


def _fresh_database(server: infra.Service) -> Iterator[str]:
    url = databases.create_database(server.url)
    try:
        yield url
    finally:
        databases.drop_database(server.url, url.rsplit("/", 1)[1].split("?")[0])


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: infra.Service) -> Iterator[str]:
    """A fresh, empty database for this test session."""
    yield from _fresh_database(postgres_server)


@pytest.fixture
def new_database_dsn(postgres_server: infra.Service) -> Iterator[str]:
    """A brand-new empty database for one test."""
    yield from _fresh_database(postgres_server)


@pytest.fixture(scope="session")
def service_dsns(work_dir: Path, postgres_server: infra.Service) -> Iterator[dict[str, str]]:
    """A database of this session's own where auth and history have roles and schemas of their own, as in
    production (genai_common.roles): component -> the URL of its role. A database apart: provisioning moves
    the tables that tests migrating as the administrator leave in `public` of `postgres_dsn`."""
    for url in _fresh_database(postgres_server):
        yield databases.service_database_urls(url, work_dir)


@pytest.fixture(scope="session")
def redis_server(work_dir: Path) -> Iterator[infra.Service]:
    with infra.started(infra.redis_for_tests(work_dir / "redis")) as service:
        yield service


@pytest.fixture(scope="session")
def redis_url(redis_server: infra.Service) -> str:
    return redis_server.url
