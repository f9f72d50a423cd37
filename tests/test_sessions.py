"""Sessions that end when they should, through nginx: a password change ends the other sessions, logout
works with an expired access token, a reused refresh token ends its chain, and a stale access token
cannot be turned into a lasting API key without the password."""

from __future__ import annotations

import time
import uuid

from jose import jwt

from tests.harness import RunningStack, User


def _access_token(
    stack: RunningStack, user: User, *, issued_ago_s: int, lifetime_s: int, auth_ago_s: int
) -> str:
    """An access token as auth signs it, issued and last signed in with a password when the test says."""
    now = int(time.time())
    claims = {
        "sub": user.id,
        "username": user.username,
        "role": "user",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now - issued_ago_s,
        "exp": now - issued_ago_s + lifetime_s,
        "iss": "genai-auth",
        "aud": "genai",
        "auth_time": now - auth_ago_s,
        "fam": uuid.uuid4().hex,
    }
    return str(jwt.encode(claims, stack.cfg.jwt_secret, algorithm="HS256"))


def _login(stack: RunningStack, user: User) -> dict[str, str]:
    with stack.client() as client:
        response = client.post("/token", json={"username": user.username, "password": user.password})
    response.raise_for_status()
    return dict(response.json())


def test_logout_with_an_expired_access_token_ends_the_session(sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    session = _login(sim_stack, user)
    expired = _access_token(sim_stack, user, issued_ago_s=3600, lifetime_s=1800, auth_ago_s=3600)
    with sim_stack.client() as client:
        out = client.post(
            "/api/v1/auth/logout",
            json={"refresh_token": session["refresh_token"]},
            headers={"Authorization": f"Bearer {expired}"},
        )
        assert out.status_code == 204, out.text
        renewed = client.post("/api/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
        assert renewed.status_code == 401
        # The refresh token alone is enough too; nothing at all is a 401.
        other = _login(sim_stack, user)
        assert (
            client.post("/api/v1/auth/logout", json={"refresh_token": other["refresh_token"]}).status_code
            == 204
        )
        assert client.post("/api/v1/auth/logout").status_code == 401


def test_changing_ones_password_ends_the_other_sessions(sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    elsewhere = _login(sim_stack, user)
    # Sessions end at one-second resolution: the other one is from an earlier second.
    time.sleep(1.1)
    here = _login(sim_stack, user)
    with sim_stack.client() as client:
        changed = client.post(
            "/api/v1/auth/password",
            json={"old_password": user.password, "new_password": user.password + "-changed"},
            headers={"Authorization": f"Bearer {here['access_token']}"},
        )
        assert changed.status_code == 200, changed.text
        refused = client.post("/api/v1/auth/refresh", json={"refresh_token": elsewhere["refresh_token"]})
        assert refused.status_code == 401
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {elsewhere['access_token']}"})
            if me.status_code == 401:
                break
            time.sleep(0.2)
        assert me.status_code == 401
        # The caller goes on with the new session in the answer.
        mine = client.get("/api/v1/me", headers={"Authorization": f"Bearer {changed.json()['access_token']}"})
        assert mine.status_code == 200


def test_a_reused_refresh_token_ends_its_whole_chain(sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    first = _login(sim_stack, user)
    with sim_stack.client() as client:
        second = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).json()
        replayed = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert replayed.status_code == 401
        assert (
            client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]}).status_code
            == 401
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {second['access_token']}"})
            if me.status_code == 401:
                break
            time.sleep(0.2)
        assert me.status_code == 401


def test_api_keys_expire_by_default_and_a_stale_token_needs_the_password(sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    # Valid for a while yet, but the password was given an hour ago (renewed since): a stolen token.
    stale = {
        "Authorization": "Bearer "
        + _access_token(sim_stack, user, issued_ago_s=60, lifetime_s=1800, auth_ago_s=3600)
    }
    with sim_stack.client() as client:
        refused = client.post("/api/v1/keys", json={"name": "exfiltrate"}, headers=stale)
        assert refused.status_code == 403
        assert "password" in refused.json()["detail"]
        wrong = client.post("/api/v1/keys", json={"name": "x", "password": "not-it"}, headers=stale)
        assert wrong.status_code == 403
        created = client.post(
            "/api/v1/keys", json={"name": "nightly", "password": user.password}, headers=stale
        )
        assert created.status_code == 201, created.text
        key = created.json()
        assert key["scope"] == "user"
        assert key["expires_at"] - key["created_at"] == 90 * 86_400
        # "never" only when asked for, right after a sign-in.
        forever = client.post(
            "/api/v1/keys", json={"name": "forever", "never_expires": True}, headers=user.headers
        )
        assert forever.status_code == 201 and forever.json()["expires_at"] == 0


def test_an_admins_key_is_user_scoped_unless_asked(sim_stack: RunningStack) -> None:
    admin = {"Authorization": f"Bearer {sim_stack.login(sim_stack.admin_username, sim_stack.admin_password)}"}
    with sim_stack.client() as client:
        plain = client.post("/api/v1/keys", json={"name": "script"}, headers=admin).json()
        assert plain["scope"] == "user"
        as_key = {"Authorization": f"Bearer {plain['key']}"}
        assert client.get("/api/v1/users", headers=as_key).status_code == 403
        ops = client.post("/api/v1/keys", json={"name": "ops", "scope": "admin"}, headers=admin).json()
        assert (
            client.get("/api/v1/users", headers={"Authorization": f"Bearer {ops['key']}"}).status_code == 200
        )
        for key in (plain, ops):
            client.delete(f"/api/v1/keys/{key['id']}", headers=admin)
