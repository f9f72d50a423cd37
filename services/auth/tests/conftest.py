"""The auth servicer on an in-process gRPC server, over the real PostgreSQL and Redis of the test run."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from pydantic import SecretStr
from redis.asyncio import Redis

from genai_auth.passwords import Passwords
from genai_auth.schema import apply_migrations
from genai_auth.servicer import AuthServicer
from genai_auth.settings import AuthSettings
from genai_auth.tokens import Tokens
from genai_auth.users import User, UserStore
from genai_common.db import create_pool
from genai_common.grpc_server import ServiceInterceptor
from genai_common.redis_client import create_redis
from genai_devstack import infra

# The cheapest argon2 parameters there are: hashing is not what these tests measure. Only allowed in dev.
FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 64, "argon2_parallelism": 1}

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Serve = Callable[[AuthServicer], AbstractAsyncContextManager[auth_pb2_grpc.AuthServiceStub]]


@pytest.fixture(scope="session")
def settings(service_dsns: dict[str, str], redis_url: str) -> AuthSettings:
    # As auth's own PostgreSQL role (genai_common.roles), never the administrator: what production runs as.
    return AuthSettings(
        GENAI_ENV="dev",
        database_url=service_dsns["auth"],
        redis_url=redis_url,
        jwt_secret=SecretStr("auth-unit-tests-" + uuid.uuid4().hex),
        login_max_failures=3,
        login_max_failures_per_address=6,
        login_window_s=60,
        **FAST_ARGON2,
    )


@pytest.fixture(scope="session")
async def pool(settings: AuthSettings) -> AsyncIterator[asyncpg.Pool]:
    await apply_migrations(settings.database_url)
    pool = await create_pool(settings.database_url)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis_client(settings: AuthSettings) -> AsyncIterator[Redis]:
    client = create_redis(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def store(settings: AuthSettings, pool: asyncpg.Pool) -> UserStore:
    return UserStore(pool, Passwords.from_settings(settings))


@pytest.fixture(scope="session")
def tokens(settings: AuthSettings) -> Tokens:
    return Tokens.from_settings(settings)


@asynccontextmanager
async def _running(servicer: AuthServicer) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    # The same interceptor as in production, so unexpected errors surface as INTERNAL here too.
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


@pytest.fixture(scope="session")
def serve() -> Serve:
    """Starts a given servicer on its own in-process server (for servicers wired differently)."""
    return _running


@pytest.fixture(scope="session")
async def stub(
    settings: AuthSettings, pool: asyncpg.Pool, redis_client: Redis
) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    async with _running(AuthServicer.from_settings(settings, pool, redis_client)) as stub:
        yield stub


@pytest.fixture
def make_user(store: UserStore) -> MakeUser:
    """Creates a user with a unique name and returns it with its password."""

    async def make(role: str = "user", disabled: bool = False) -> tuple[User, str]:
        username = f"t-{uuid.uuid4().hex[:16]}"
        password = f"pw-{uuid.uuid4().hex}"
        user = await store.create(username, password, role)
        if disabled:
            changed = await store.set_disabled(username, True)
            assert changed is not None
            user = changed
        return user, password

    return make


@pytest.fixture
def address() -> str:
    """A client address of this test's own, so per-address counters never carry over between tests."""
    return f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def admin_metadata(
    make_user: MakeUser, stub: auth_pb2_grpc.AuthServiceStub, address: str
) -> tuple[tuple[str, str], ...]:
    admin, password = await make_user("admin")
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=admin.username, password=password, client_address=address)
    )
    return (("authorization", f"Bearer {pair.access_token}"),)


@pytest.fixture
def own_redis(work_dir: Path) -> Iterator[infra.Service]:
    """A redis-server of this test's own, which the test may stop (SIGSTOP), resume or kill."""
    service = infra.start_local_redis(work_dir / f"redis-{uuid.uuid4().hex[:8]}", infra.free_port())
    try:
        yield service
    finally:
        process = service.process  # type: ignore[attr-defined]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a stopped process would not see the SIGTERM
        service.stop()


@dataclass
class Wired:
    """A servicer on its own Redis, served in-process, with the upkeep loop that main() runs."""

    stub: auth_pb2_grpc.AuthServiceStub
    servicer: AuthServicer


Wire = Callable[..., AbstractAsyncContextManager[Wired]]


@pytest.fixture
def wire(settings: AuthSettings, pool: asyncpg.Pool) -> Wire:
    @asynccontextmanager
    async def wired(redis_url: str, *, cooldown_s: float = 0.5, upkeep: bool = True) -> AsyncIterator[Wired]:
        client = create_redis(redis_url)
        own = settings.model_copy(update={"redis_url": redis_url, "redis_cooldown_s": cooldown_s})
        servicer = AuthServicer.from_settings(own, pool, client)
        stop = asyncio.Event()
        task = None
        if upkeep:
            task = asyncio.create_task(servicer.revocations.maintain(60, stop=stop, tick_s=0.05))
        try:
            async with _running(servicer) as stub:
                yield Wired(stub, servicer)
        finally:
            stop.set()
            if task is not None:
                await asyncio.wait_for(task, 10)
            await client.aclose()

    return wired
