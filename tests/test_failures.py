"""When a dependency fails the user gets a clear answer quickly, and nothing they wrote is lost."""

from __future__ import annotations

import time
import uuid

from tests.harness import RunningStack, User


def test_upstream_stopped_gives_503_with_a_message(live: RunningStack, user: User) -> None:
    live.stop("upstream")
    try:
        with live.client(timeout=30) as client:
            response = client.post(
                "/ask", json={"prompt": f"Anyone there? {uuid.uuid4().hex}"}, headers=user.headers
            )
            health = client.get("/health")
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) > 0
        assert "model" in response.json()["detail"]
        assert "unavailable" in response.json()["detail"]
        assert health.status_code == 503
        assert health.json()["dependencies"]["model"].startswith("down")
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
    live.stop("history")
    try:
        with live.client() as client:
            response = client.post("/ask", json={"prompt": prompt, "max_tokens": 4}, headers=user.headers)
            health = client.get("/health").json()
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


def test_health_reports_every_dependency(live: RunningStack) -> None:
    with live.client() as client:
        body = client.get("/health").json()
    assert body["status"] == "ok", body
    assert set(body["dependencies"]) == {
        "auth",
        "history",
        "inference_adapter",
        "model",
        "redis",
        "postgres_auth",
        "postgres_history",
    }
    assert all(v == "ok" for v in body["dependencies"].values())
    assert body["reasons"] == []
