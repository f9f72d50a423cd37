"""User administration is for admins only, enforced by the gateway and by auth."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx

from tests.harness import RunningStack, User


def test_admin_creates_a_user_who_can_log_in(live: RunningStack) -> None:
    admin_token = live.login(live.admin_username, live.admin_password)
    username = f"new{uuid.uuid4().hex[:8]}"
    with live.client() as client:
        created = client.post(
            "/api/v1/users", json={"username": username}, headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["role"] == "user"
        # No password given: one was generated and is shown this once.
        assert len(body["password"]) >= 16
        assert (
            client.post("/token", json={"username": username, "password": body["password"]}).status_code
            == 200
        )
        duplicate = client.post(
            "/api/v1/users",
            json={"username": username.upper()},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
    assert duplicate.status_code == 409


def test_plain_user_gets_403_from_admin_endpoints(live: RunningStack, user: User) -> None:
    with live.client() as client:
        assert (
            client.post("/api/v1/users", json={"username": "sneaky1"}, headers=user.headers).status_code
            == 403
        )
        assert client.get("/api/v1/users", headers=user.headers).status_code == 403
        patch = client.patch(f"/api/v1/users/{user.username}", json={"disabled": True}, headers=user.headers)
        assert patch.status_code == 403


def test_disabled_user_is_locked_out_at_once(live: RunningStack) -> None:
    victim = live.new_user()
    admin = {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}
    with live.client() as client:
        assert client.get("/api/v1/me", headers=victim.headers).status_code == 200
        patched = client.patch(f"/api/v1/users/{victim.username}", json={"disabled": True}, headers=admin)
        assert patched.status_code == 200 and patched.json()["disabled"] is True
        assert client.get("/api/v1/me", headers=victim.headers).status_code == 401
        login = client.post("/token", json={"username": victim.username, "password": victim.password})
    assert login.status_code in (401, 403)


def test_admin_sets_per_user_limits(live: RunningStack, user: User) -> None:
    target = live.new_user()
    admin = {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}
    url = f"/api/v1/users/{target.username}"

    def listed(client: httpx.Client) -> dict[str, object]:
        """The target as GET /api/v1/users shows it, whichever page it is on."""
        params: dict[str, str | int] = {"limit": 200}
        for _ in range(1000):
            page = client.get("/api/v1/users", params=params, headers=admin)
            assert page.status_code == 200, page.text
            for shown in page.json()["users"]:
                if shown["username"] == target.username:
                    return shown
            if not page.json()["next_cursor"]:
                break
            params["cursor"] = page.json()["next_cursor"]
        raise AssertionError(f"{target.username} not listed")

    with live.client() as client:
        assert listed(client)["limits"] == {}
        limits = {"requests_per_minute": 5, "tokens_per_day": -1}
        patched = client.patch(url, json={"limits": limits}, headers=admin)
        assert patched.status_code == 200, patched.text
        assert patched.json()["limits"] == limits and patched.json()["disabled"] is False
        assert listed(client)["limits"] == limits

        # Both at once; the new object replaces the old one as a whole.
        patched = client.patch(
            url, json={"disabled": True, "limits": {"concurrent_requests": 2}}, headers=admin
        )
        assert patched.status_code == 200, patched.text
        assert (patched.json()["disabled"], patched.json()["limits"]) == (True, {"concurrent_requests": 2})
        shown = listed(client)
        assert (shown["disabled"], shown["limits"]) == (True, {"concurrent_requests": 2})

        for bad in (
            {},
            {"limits": {"requests_per_minute": 0}},
            {"limits": {"requests_per_minute": -2}},
            {"limits": {"requests_per_minute": 1.5}},
            {"limits": {"requests_per_minute": 10**9 + 1}},
            {"limits": {"requests_per_hour": 5}},
        ):
            refused = client.patch(url, json=bad, headers=admin)
            assert refused.status_code == 422, (bad, refused.text)
        assert listed(client)["limits"] == {"concurrent_requests": 2}

        # A plain user may not set anyone's limits, their own included.
        for name in (target.username, user.username):
            denied = client.patch(
                f"/api/v1/users/{name}", json={"limits": {"requests_per_minute": -1}}, headers=user.headers
            )
            assert denied.status_code == 403, denied.text
        assert listed(client)["limits"] == {"concurrent_requests": 2}

        cleared = client.patch(url, json={"limits": None}, headers=admin)
        assert cleared.status_code == 200 and cleared.json()["limits"] == {}
        assert listed(client)["limits"] == {}
        missing = client.patch(
            f"/api/v1/users/nobody{uuid.uuid4().hex[:8]}", json={"limits": {}}, headers=admin
        )
        assert missing.status_code == 404


def test_cli_creates_a_user(live: RunningStack) -> None:
    username = f"cli{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "genai_auth.cli", "create-user", username, "--password-stdin"],
        input="a-long-enough-password\n",
        env=live.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert live.login(username, "a-long-enough-password")


def test_admin_purges_the_answer_cache(live: RunningStack, user: User) -> None:
    prompt = f"Purge me {uuid.uuid4().hex[:8]}"
    admin = {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}
    with live.client() as client:
        ask = {"prompt": prompt, "max_tokens": 4}
        first = client.post("/ask", json=ask, headers=user.headers)
        assert first.status_code == 200, first.text
        assert first.json()["source"] == "model"
        assert client.post("/ask", json=ask, headers=user.headers).json()["source"] == "cache"
        assert client.delete("/api/v1/admin/cache", headers=user.headers).status_code == 403
        purged = client.delete("/api/v1/admin/cache", headers=admin)
        assert purged.status_code == 200 and purged.json()["deleted"] >= 1
        first = client.post("/ask", json=ask, headers=user.headers)
        assert first.status_code == 200, first.text
        assert first.json()["source"] == "model"
