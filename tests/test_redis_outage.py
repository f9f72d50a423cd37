"""A Redis that hangs (SIGSTOP) or dies never hangs a request; answers go on (fail-open) or get a clear 503
(fail-closed); when Redis returns, limits and cache work again without a restart (issue 5)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch


@pytest.fixture(scope="module")
def outage(
    work_dir: Path, postgres_server: infra.Service
) -> Iterator[tuple[RunningStack, infra.Service, str]]:
    """A stack with a Redis of its own, a fail-open gateway (behind nginx) and a fail-closed one."""
    redis_server = infra.start_local_redis(work_dir / "outage-redis", infra.free_port())
    database = databases.create_database(postgres_server.url)
    stack = launch(
        work_dir,
        database,
        redis_server.url,
        upstream="sim",
        upstream_args=["--output-tokens", "8"],
        name="outage-stack",
        # 2 s rather than 0.5 s for each Redis command: a loaded test machine must not look like an outage
        # outside the outages this file makes (a hung Redis then costs 2 s a command until the guard notices).
        overrides={"GENAI_GATEWAY_REDIS_FAILURE_POLICY": "open", "GENAI_GATEWAY_REDIS_TIMEOUT_S": "2"},
    )
    try:
        closed = stack.start_extra_gateway("gateway-closed", redis_failure_policy="closed")
        yield stack, redis_server, closed
    finally:
        stack.stop_all()
        with contextlib.suppress(Exception):
            os.kill(redis_server.process.pid, signal.SIGCONT)  # type: ignore[attr-defined]
        redis_server.stop()
        databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1])


def _ask(client: httpx.Client, user: User, prompt: str, **headers: str) -> httpx.Response:
    return client.post("/ask", json={"prompt": prompt}, headers={**user.headers, **headers})


def test_hung_then_dead_redis_then_recovery(outage: tuple[RunningStack, infra.Service, str]) -> None:
    stack, redis_server, closed_url = outage
    user = stack.new_user()
    stack.set_limits(user, requests_per_minute=1000)
    prompt = f"outage {uuid.uuid4().hex}"
    with stack.client(timeout=15) as client:
        assert _ask(client, user, prompt).json()["source"] == "model"
        assert _ask(client, user, prompt).json()["source"] == "cache"

    # Taken before the outage, as monitoring would hold one: /health shows its details to admins only.
    admin = stack.admin_headers()
    pid = redis_server.process.pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGSTOP)
    try:
        with stack.client(timeout=15) as client, httpx.Client(base_url=closed_url, timeout=15) as closed:
            # Fail-open: answered, from the model (the cache is out of reach), again and again.
            for _ in range(5):
                response = _ask(client, user, prompt)
                assert response.status_code == 200, response.text
                assert response.json()["source"] == "model"
            # A fresh login and a fresh token work too (auth falls back to PostgreSQL).
            token = stack.login(user.username, user.password)
            assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            health = client.get("/health", headers=admin).json()
            assert health["status"] == "degraded" and health["dependencies"]["redis"].startswith("down")
            # Anyone else hears only that: degraded here, down on the fail-closed gateway.
            assert client.get("/health").json() == {"status": "degraded"}
            refusing = closed.get("/health")
            assert (refusing.status_code, refusing.json()) == (503, {"status": "down"})
            # Fail-closed: a clear 503 instead.
            refused = _ask(closed, user, prompt)
            assert refused.status_code == 503
            assert "Redis" in refused.json()["detail"]
    finally:
        os.kill(pid, signal.SIGCONT)

    # Dead, not hung: the same.
    redis_server.stop()
    with stack.client(timeout=15) as client:
        for _ in range(3):
            assert _ask(client, user, prompt).status_code == 200

    # Back, on the same address: no restart of anything else.
    revived = infra.start_local_redis(stack.cfg.work_dir / "redis-again", redis_server.port)
    try:
        # Generous: on a loaded machine the health checks' own short deadlines can miss for a while.
        deadline = time.monotonic() + 90
        with stack.client(timeout=15) as client:
            # Recovery takes a moment: one caller probes Redis after the cool-down, the rest follow.
            health: dict[str, object] = {}
            while time.monotonic() < deadline:
                health = client.get("/health").json()
                if health["status"] == "ok":
                    break
                time.sleep(0.5)
            assert health["status"] == "ok", health
            # Limits are counted in Redis again: 4 a minute, of which the next two asks take two. A user of
            # their own: the one above was counted in the gateway's memory during the outage, and a Redis
            # command that times out on a loaded machine falls back on those counts for a moment.
            after = stack.new_user()
            stack.set_limits(after, requests_per_minute=4)
            fresh = f"after {uuid.uuid4().hex}"
            first = client.post("/ask", json={"prompt": fresh}, headers=after.headers).json()
            second = client.post("/ask", json={"prompt": fresh}, headers=after.headers).json()
            assert (first.get("source"), second.get("source")) == ("model", "cache"), (first, second)
            codes = [
                client.post("/ask", json={"prompt": fresh}, headers=after.headers).status_code
                for _ in range(3)
            ]
        assert codes == [200, 200, 429]
        # Counted in the Redis that came back.
        counted = redis.Redis.from_url(revived.url).zcard(f"quota:user:{after.id}:req")
        assert counted >= 1, counted
    finally:
        revived.stop()
