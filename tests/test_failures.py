"""When a dependency fails the user gets a clear answer quickly, and nothing they wrote is lost."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.harness import RunningStack, User


def test_upstream_stopped_gives_503_with_a_message(live: RunningStack, user: User) -> None:
    admin = live.admin_headers()
    live.stop("upstream")
    try:
        with live.client(timeout=30) as client:
            response = client.post(
                "/ask", json={"prompt": f"Anyone there? {uuid.uuid4().hex}"}, headers=user.headers
            )
            health = client.get("/health", headers=admin)
            public = client.get("/health")
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert "model" in response.json()["detail"]
        assert "unavailable" in response.json()["detail"]
        assert health.status_code == 503
        assert health.json()["dependencies"]["model"].startswith("down")
        # Everyone else learns only that the service is down, with the same status code.
        assert (public.status_code, public.json()) == (503, {"status": "down"})
    finally:
        live.start("upstream")
        live.wait_healthy()
    with live.client() as client:
        again = client.post(
            "/ask", json={"prompt": f"Back? {uuid.uuid4().hex[:6]}", "max_tokens": 4}, headers=user.headers
        )
    assert again.status_code == 200


def test_history_down_keeps_the_answer_and_the_exchange(live: RunningStack, user: User) -> None:
    prompt = f"Remember this while history is down {uuid.uuid4().hex[:6]}"
    admin = live.admin_headers()
    live.stop("history")
    try:
        with live.client() as client:
            response = client.post("/ask", json={"prompt": prompt, "max_tokens": 4}, headers=user.headers)
            health = client.get("/health", headers=admin).json()
        assert response.status_code == 200
        assert response.json()["response"]
        assert health["status"] == "degraded"
        assert health["history_spool"] >= 1
        assert any("history" in reason for reason in health["reasons"]), health
    finally:
        live.start("history")
        live.wait_healthy()
    # The spooled exchange reaches history once it is back.
    deadline = time.monotonic() + 30
    titles: list[str] = []
    with live.client() as client:
        while time.monotonic() < deadline:
            listing = client.get("/api/v1/history", headers=user.headers)
            if listing.status_code == 200:
                titles = [c["title"] for c in listing.json()["conversations"]]
                if prompt in titles:
                    break
            time.sleep(0.5)
    assert prompt in titles


DEPENDENCIES = {"auth", "history", "inference_adapter", "model", "redis", "postgres_auth", "postgres_history"}


def _details(response: httpx.Response) -> None:
    body = response.json()
    assert response.status_code == 200, response.text
    assert body["status"] == "ok", body
    assert set(body["dependencies"]) == DEPENDENCIES
    assert all(v == "ok" for v in body["dependencies"].values())
    assert body["reasons"] == []
    assert {"model", "history_spool", "redis_failure_policy", "credential_cache"} <= set(body)


def test_health_reports_every_dependency_to_an_admin(live: RunningStack) -> None:
    admin = live.admin_headers()
    with live.client() as client:
        _details(client.get("/health", headers=admin))
        # An admin-scope API key is an admin's credential too; a user-scope key of an admin acts as a user.
        keys = {
            scope: client.post(
                "/api/v1/keys",
                json={"name": f"health-{scope}", "scope": scope, "password": live.admin_password},
                headers=admin,
            )
            for scope in ("admin", "user")
        }
        assert all(key.status_code in (200, 201) for key in keys.values()), [k.text for k in keys.values()]
        _details(client.get("/health", headers={"Authorization": f"Bearer {keys['admin'].json()['key']}"}))
        _public(client.get("/health", headers={"Authorization": f"Bearer {keys['user'].json()['key']}"}))


def _public(response: httpx.Response) -> None:
    """Only up or down: no part of the inside named, however the caller tried."""
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok"}
    assert not any(name in response.text for name in DEPENDENCIES | {"reasons", "credential_cache"})


def test_health_tells_anyone_else_only_the_status(live: RunningStack, user: User) -> None:
    with live.client() as client:
        # Anonymous, an ordinary user's token, an API key of a user's, and credentials that are no good:
        # the same answer, never a 401.
        key = client.post(
            "/api/v1/keys", json={"name": "health", "password": user.password}, headers=user.headers
        )
        assert key.status_code in (200, 201), key.text
        callers = [
            {},
            user.headers,
            {"Authorization": f"Bearer {key.json()['key']}"},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": "Basic YWRtaW46YWRtaW4="},
        ]
        for headers in callers:
            _public(client.get("/health", headers=headers))
