"""The real service process (python -m genai_auth) started while Redis is unreachable: it serves, says
SERVING on grpc.health.v1, logs that it is degraded, and picks Redis up by itself once Redis starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jose import jwt
from redis.asyncio import Redis

from genai_auth.passwords import Passwords
from genai_auth.revocation import COMPLETE, MIRROR_KEY
from genai_auth.servicer import SERVICE_NAME
from genai_auth.users import UserStore
from genai_common.db import create_pool
from genai_common.redis_client import create_redis
from genai_devstack import infra

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _in_redis(client: Redis, member: str) -> bool:
    """Whether the Redis mirror holds a token id (or its completeness marker, COMPLETE)."""
    return await client.zscore(MIRROR_KEY, member) is not None


async def _serving(health: health_pb2_grpc.HealthStub, service: str = "") -> bool:
    try:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == SERVING


async def _wait_for(check: Callable[[], Awaitable[object]], what: str, within_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.1)


async def test_service_serves_without_redis_and_recovers(new_database_dsn: str, work_dir: Path) -> None:
    redis_port, grpc_port = infra.free_port(), infra.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        GENAI_ENV="dev",
        GENAI_AUTH_DATABASE_URL=new_database_dsn,
        GENAI_AUTH_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",  # nothing listens there (yet)
        GENAI_AUTH_JWT_SECRET="main-test-" + uuid.uuid4().hex,
        GENAI_AUTH_LISTEN=f"127.0.0.1:{grpc_port}",
        GENAI_AUTH_REDIS_COOLDOWN_S="0.5",
        GENAI_AUTH_ARGON2_TIME_COST="1",
        GENAI_AUTH_ARGON2_MEMORY_COST="64",
        GENAI_AUTH_ARGON2_PARALLELISM="1",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genai_auth",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = asyncio.create_task(process.stdout.read())  # type: ignore[union-attr]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    redis_server: infra.Service | None = None
    try:
        health = health_pb2_grpc.HealthStub(channel)
        await _wait_for(lambda: _serving(health), "service SERVING")

        pool = await create_pool(new_database_dsn, max_size=2)
        try:
            username, password = f"main-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
            await UserStore(pool, Passwords(time_cost=1, memory_cost=64, parallelism=1)).create(
                username, password, "user"
            )
        finally:
            await pool.close()

        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = auth_pb2.LoginRequest(username=username, password=password, client_address="192.0.2.7")
        pair = await stub.Login(login, timeout=5)
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token), timeout=5)
        assert principal.username == username
        await stub.Logout(auth_pb2.LogoutRequest(access_token=pair.access_token), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await _serving(health) and await _serving(health, SERVICE_NAME)

        # Redis starts: the service notices by itself, fills it, and copies the logout made meanwhile.
        redis_server = infra.start_local_redis(work_dir / f"redis-main-{uuid.uuid4().hex[:6]}", redis_port)
        watcher = create_redis(redis_server.url)
        try:
            jti = str(jwt.get_unverified_claims(pair.access_token)["jti"])
            await _wait_for(lambda: _in_redis(watcher, COMPLETE), "Redis filled by the service")
            await _wait_for(lambda: _in_redis(watcher, jti), "outage logout copied to Redis")
        finally:
            await watcher.aclose()
        again = await stub.Login(login, timeout=5)
        await stub.Authenticate(auth_pb2.AuthenticateRequest(token=again.access_token), timeout=5)
    finally:
        await channel.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        if redis_server is not None:
            redis_server.stop()
    assert process.returncode == 0
    lines = (await output).decode().splitlines()
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    warnings = [entry["msg"] for entry in logs if entry["level"] == "warning"]
    assert any("Redis unavailable" in msg and "auth degraded" in msg for msg in warnings), lines
    assert any("Redis is back" in msg for msg in warnings), lines
    # Never a token or a password in the logs.
    assert pair.access_token not in "\n".join(lines) and password not in "\n".join(lines)
