"""An admin resets passwords and changes roles; a plain user can do neither."""

from __future__ import annotations

import time

from tests.harness import RunningStack, User


def _admin(live: RunningStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}


def test_admin_resets_a_password(live: RunningStack) -> None:
    target = live.new_user()
    admin = _admin(live)
    with live.client() as client:
        login = client.post("/token", json={"username": target.username, "password": target.password})
        assert login.status_code == 200, login.text
        refresh_token = login.json()["refresh_token"]
        # Token times have one-second resolution: the reset must come in a later second than the logins.
        time.sleep(1.1)

        reset = client.post(f"/api/v1/users/{target.username}/password", headers=admin)
        assert reset.status_code == 200, reset.text
        body = reset.json()
        assert (body["username"], body["role"]) == (target.username, "user")
        new_password = body["password"]
        assert len(new_password) >= 16

        old = client.post("/token", json={"username": target.username, "password": target.password})
        assert old.status_code == 401
        # The sessions begun with the old password are over.
        assert client.get("/api/v1/me", headers=target.headers).status_code == 401
        assert client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token}).status_code == 401
        new = client.post("/token", json={"username": target.username, "password": new_password})
        assert new.status_code == 200, new.text
        token = new.json()["access_token"]
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

        chosen = client.post(
            f"/api/v1/users/{target.username}/password",
            json={"password": "chosen-by-the-admin"},
            headers=admin,
        )
        assert chosen.status_code == 200, chosen.text
        assert chosen.json()["password"] is None
        login = client.post("/token", json={"username": target.username, "password": "chosen-by-the-admin"})
        assert login.status_code == 200
        short = client.post(
            f"/api/v1/users/{target.username}/password", json={"password": "short"}, headers=admin
        )
        assert short.status_code == 400
        missing = client.post("/api/v1/users/nobody-here/password", headers=admin)
        assert missing.status_code == 404


def test_admin_changes_a_role(live: RunningStack) -> None:
    target = live.new_user()
    admin = _admin(live)
    url = f"/api/v1/users/{target.username}"
    with live.client() as client:
        assert client.get("/api/v1/users", headers=target.headers).status_code == 403
        promoted = client.patch(url, json={"role": "admin"}, headers=admin)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["role"] == "admin"
        # The same token: the role is looked up on every request.
        assert client.get("/api/v1/users", headers=target.headers).status_code == 200
        assert client.get("/api/v1/me", headers=target.headers).json()["role"] == "admin"

        # The new admin cannot demote themselves, whatever else the request asks.
        own = client.patch(
            url, json={"role": "user", "limits": {"requests_per_minute": 5}}, headers=target.headers
        )
        assert own.status_code == 400
        assert "own admin role" in own.text

        demoted = client.patch(url, json={"role": "user", "disabled": False}, headers=admin)
        assert demoted.status_code == 200, demoted.text
        assert demoted.json()["role"] == "user" and demoted.json()["limits"] == {}
        assert client.get("/api/v1/users", headers=target.headers).status_code == 403
        for body in ({"role": "root"}, {"role": None}, {}):
            assert client.patch(url, json=body, headers=admin).status_code == 422, body


def test_plain_user_cannot_reset_passwords_or_change_roles(live: RunningStack, user: User) -> None:
    other = live.new_user()
    with live.client() as client:
        reset = client.post(f"/api/v1/users/{other.username}/password", headers=user.headers)
        assert reset.status_code == 403
        promote = client.patch(f"/api/v1/users/{user.username}", json={"role": "admin"}, headers=user.headers)
        assert promote.status_code == 403
        assert client.get("/api/v1/users", headers=user.headers).status_code == 403
    # Nothing changed: the other user's password still works.
    assert live.login(other.username, other.password)
