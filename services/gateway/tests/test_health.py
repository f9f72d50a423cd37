"""GET /health: the status for anyone, every dependency's for an admin, and never an error about who asks.

The gateway is the real app (create_app, its lifespan, clients and credential checks); the auth service
is a stand-in gRPC server on port 0 that knows a few credentials, answers grpc.health.v1, and can hang.
History and the adapter are addresses where nothing listens, so the report says `down` (503): what a
caller may learn of an outage is the point here, not the outage itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from fastapi.testclient import TestClient
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from genai_gateway.app import create_app
from genai_gateway.settings import GatewaySettings

ADMIN = {"Authorization": "Bearer admin-token"}
DETAILS = {"reasons", "model", "dependencies", "history_spool", "redis_failure_policy", "credential_cache"}
PRINCIPALS = {
    "admin-token": auth_pb2.Principal(user_id="a", username="root", role="admin", token_id="t1"),
    "admin-key": auth_pb2.Principal(
        user_id="a", username="root", role="admin", token_id="k1", api_key_id="k1", scope="admin"
    ),
    "user-token": auth_pb2.Principal(user_id="u", username="alice", role="user", token_id="t2"),
    # A Telegram link's key: refused on every route beyond chatting, /health included.
    "chat-key": auth_pb2.Principal(
        user_id="a", username="root", role="admin", token_id="k2", api_key_id="k2", scope="chat"
    ),
}


@dataclass
class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """Knows PRINCIPALS; with `hang` set, Authenticate waits until the test ends."""

    hang: bool = False
    released: threading.Event = field(default_factory=threading.Event)
    calls: int = 0

    def Authenticate(  # noqa: N802 (the RPC's name)
        self, request: auth_pb2.AuthenticateRequest, context: grpc.ServicerContext
    ) -> auth_pb2.Principal:
        self.calls += 1
        if self.hang:
            self.released.wait(60)
        principal = PRINCIPALS.get(request.token)
        if principal is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return principal


def _closed_port() -> int:
    """A port nothing listens on (taken and given back at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def auth() -> Iterator[tuple[FakeAuth, int]]:
    fake = FakeAuth()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(fake, server)
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, port
    fake.released.set()
    server.stop(0)


def _gateway(auth_port: int, redis_url: str) -> TestClient:
    settings = GatewaySettings(
        # Dev mode: plaintext channels to the stand-ins (mutual TLS has tests of its own).
        GENAI_ENV="dev",
        auth_target=f"127.0.0.1:{auth_port}",
        history_target=f"127.0.0.1:{_closed_port()}",
        adapter_target=f"127.0.0.1:{_closed_port()}",
        redis_url=redis_url,
        grpc_port=0,
        metrics_port=0,
        similar_enabled=False,
        # Every check asks auth: the test counts the calls.
        auth_cache_ttl_s=0,
        auth_timeout_s=0.5,
    )
    return TestClient(create_app(settings))


def test_anyone_gets_the_status_only_and_costs_auth_nothing(
    auth: tuple[FakeAuth, int], redis_url: str
) -> None:
    fake, port = auth
    with _gateway(port, redis_url) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "down"}
    assert fake.calls == 0


def test_an_admin_token_or_admin_key_gets_every_dependency(
    auth: tuple[FakeAuth, int], redis_url: str
) -> None:
    _, port = auth
    with _gateway(port, redis_url) as client:
        for token in ("admin-token", "admin-key"):
            response = client.get("/health", headers={"Authorization": f"Bearer {token}"})
            body = response.json()
            assert response.status_code == 503, token
            assert DETAILS <= set(body), (token, body)
            assert body["status"] == "down"
            assert body["dependencies"]["auth"] == "ok"
            assert body["dependencies"]["inference_adapter"].startswith("down")
            assert any("model service" in reason for reason in body["reasons"]), body


@pytest.mark.parametrize(
    "authorization",
    ["Bearer user-token", "Bearer chat-key", "Bearer not-a-token", "Bearer ", "Basic cm9vdDpyb290"],
)
def test_any_other_credential_gets_the_status_and_no_error(
    auth: tuple[FakeAuth, int], redis_url: str, authorization: str
) -> None:
    _, port = auth
    with _gateway(port, redis_url) as client:
        response = client.get("/health", headers={"Authorization": authorization})
    assert response.status_code == 503
    assert response.json() == {"status": "down"}


def test_a_hung_auth_gives_the_public_answer_after_its_deadline(
    auth: tuple[FakeAuth, int], redis_url: str
) -> None:
    fake, port = auth
    fake.hang = True
    with _gateway(port, redis_url) as client:
        started = time.monotonic()
        response = client.get("/health", headers=ADMIN)
        waited = time.monotonic() - started
    assert response.status_code == 503
    assert response.json() == {"status": "down"}
    assert fake.calls == 1
    # Not a speed figure: auth holds the call for 60 s, so an answer at all means the deadline cut it.
    assert waited < 30


def test_with_auth_gone_anyone_hears_down_and_a_token_changes_nothing(redis_url: str) -> None:
    with _gateway(_closed_port(), redis_url) as client:
        anonymous = client.get("/health")
        admin = client.get("/health", headers=ADMIN)
    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "down"})
    assert (admin.status_code, admin.json()) == (503, {"status": "down"})
