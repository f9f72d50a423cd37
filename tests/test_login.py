"""Logging in through nginx: good and bad passwords, and tokens that must never be accepted."""

from __future__ import annotations

import time
import uuid

from jose import jwt

from tests.harness import RunningStack, User


def test_login_returns_token_and_role(live: RunningStack, user: User) -> None:
    with live.client() as client:
        response = client.post("/token", json={"username": user.username, "password": user.password})
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["role"] == "user"
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == user.username


def test_login_accepts_the_oauth2_form(live: RunningStack, user: User) -> None:
    with live.client() as client:
        response = client.post("/token", data={"username": user.username, "password": user.password})
    assert response.status_code == 200
    assert response.json()["access_token"]


def test_wrong_password_and_unknown_user_get_the_same_401(live: RunningStack, user: User) -> None:
    with live.client() as client:
        wrong = client.post("/token", json={"username": user.username, "password": "not-the-password"})
        unknown = client.post("/token", json={"username": f"nobody{uuid.uuid4().hex[:6]}", "password": "x"})
    assert wrong.status_code == 401
    assert unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert "password" in wrong.json()["detail"]


def _claims(user: User, live: RunningStack, **changes: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user.id,
        "username": user.username,
        "role": "admin",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "iss": "genai-auth",
        "aud": "genai",
    }
    claims.update(changes)
    return claims


def _rejected(live: RunningStack, token: str) -> bool:
    with live.client() as client:
        response = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 401 and bool(response.json()["detail"])


def test_a_correctly_signed_token_is_accepted(live: RunningStack, user: User) -> None:
    # The control for the tests below: the same claims, signed with the real secret, work.
    token = jwt.encode(_claims(user, live, role="user"), live.cfg.jwt_secret, algorithm="HS256")
    assert not _rejected(live, token)


def test_expired_token_gets_401(live: RunningStack, user: User) -> None:
    past = int(time.time()) - 3600
    token = jwt.encode(_claims(user, live, iat=past - 600, exp=past), live.cfg.jwt_secret, algorithm="HS256")
    assert _rejected(live, token)


def test_forged_token_gets_401(live: RunningStack, user: User) -> None:
    token = jwt.encode(_claims(user, live), "another-secret-" + "x" * 40, algorithm="HS256")
    assert _rejected(live, token)


def test_alg_none_token_gets_401(live: RunningStack, user: User) -> None:
    import base64
    import json

    def b64(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(_claims(user, live))}."
    assert _rejected(live, token)


def test_token_without_audience_gets_401(live: RunningStack, user: User) -> None:
    claims = _claims(user, live)
    del claims["aud"]
    assert _rejected(live, jwt.encode(claims, live.cfg.jwt_secret, algorithm="HS256"))


def test_logout_revokes_the_token(live: RunningStack) -> None:
    fresh = live.new_user()
    with live.client() as client:
        assert client.get("/api/v1/me", headers=fresh.headers).status_code == 200
        assert client.post("/api/v1/auth/logout", headers=fresh.headers).status_code == 204
        assert client.get("/api/v1/me", headers=fresh.headers).status_code == 401


def test_missing_token_gets_401(live: RunningStack) -> None:
    with live.client() as client:
        response = client.post("/ask", json={"prompt": "hello"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
