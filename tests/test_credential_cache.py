"""Cached Authenticate answers (issue 6): repeated requests skip the auth service, and every change to a
credential still takes effect, on this gateway and on another one, whoever makes the change."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.harness import RunningStack, User

# How long a change may take to reach another gateway through the auth service's change feed. Far below
# the cache's TTL (10 s), so a refusal within it is the feed's doing, not the entry's age.
FEED_BOUND_S = 5.0


OTHER = "gateway-credentials"


@pytest.fixture(scope="module")
def other_gateway(sim_stack: RunningStack) -> str:
    return sim_stack.start_extra_gateway(OTHER)


def _cache_on(stack: RunningStack) -> bool:
    """Whether the other gateway trusts its cache (hears auth's change feed): /health's `credential_cache`
    is for admins, and needs auth to check the admin; the gateway's own /metrics port says it to anyone
    inside, also while auth is down."""
    return stack.metrics(OTHER).get(("genai_gateway_auth_feed_heard", ()), 0.0) == 1.0


def _refused_within(client: httpx.Client, headers: dict[str, str], bound_s: float) -> int:
    """Ask until the credential is refused; return how many answers were still 200 before that."""
    accepted = 0
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        status = client.get("/api/v1/me", headers=headers).status_code
        if status == 401:
            return accepted
        assert status == 200, status
        accepted += 1
        time.sleep(0.02)
    raise AssertionError(f"still accepted {bound_s} s after the change ({accepted} answers)")


def test_repeated_requests_skip_the_auth_service(sim_stack: RunningStack, other_gateway: str) -> None:
    # The gateway subscribes to auth's change feed as it starts, and caches once it hears it.
    deadline = time.monotonic() + FEED_BOUND_S
    while not _cache_on(sim_stack):
        assert time.monotonic() < deadline, "the gateway never heard auth's change feed"
        time.sleep(0.1)
    user = sim_stack.new_user()
    with httpx.Client(base_url=other_gateway, timeout=30) as client:
        before = sim_stack.auth_cache_lookups(OTHER)
        for _ in range(20):
            assert client.get("/api/v1/me", headers=user.headers).status_code == 200
        after = sim_stack.auth_cache_lookups(OTHER)
    misses = after.get("miss", 0) - before.get("miss", 0)
    hits = after.get("hit", 0) - before.get("hit", 0)
    print(f"\n20 requests with one token: {hits:.0f} answered from the cache, {misses:.0f} asked auth")
    assert misses + hits == 20
    assert misses == 1


def test_a_logout_on_one_gateway_reaches_the_other(sim_stack: RunningStack, other_gateway: str) -> None:
    user = sim_stack.new_user()
    with sim_stack.client() as through_nginx, httpx.Client(base_url=other_gateway, timeout=30) as other:
        # Cached on both gateways.
        for client in (through_nginx, other, through_nginx, other):
            assert client.get("/api/v1/me", headers=user.headers).status_code == 200
        assert through_nginx.post("/api/v1/auth/logout", headers=user.headers).status_code == 204
        # The gateway that made the change refuses at once.
        assert through_nginx.get("/api/v1/me", headers=user.headers).status_code == 401
        late = _refused_within(other, user.headers, FEED_BOUND_S)
    print(f"\nthe other gateway answered {late} request(s) after the logout before refusing")


def test_a_logout_ends_the_sessions_earlier_token_on_the_other_gateway(
    sim_stack: RunningStack, other_gateway: str
) -> None:
    """A refresh gives a new access token while the old one is still valid (another tab holds it); the
    logout, made with the new one, ends the whole session, and the other gateway forgets the old one too."""
    user = sim_stack.new_user()
    with sim_stack.client() as through_nginx, httpx.Client(base_url=other_gateway, timeout=30) as other:
        signed_in = through_nginx.post("/token", json={"username": user.username, "password": user.password})
        assert signed_in.status_code == 200, signed_in.text
        old = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        renewed = through_nginx.post(
            "/api/v1/auth/refresh", json={"refresh_token": signed_in.json()["refresh_token"]}
        )
        assert renewed.status_code == 200, renewed.text
        new = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
        for _ in range(2):
            assert other.get("/api/v1/me", headers=old).status_code == 200
        assert through_nginx.post("/api/v1/auth/logout", headers=new).status_code == 204
        late = _refused_within(other, old, FEED_BOUND_S)
    print(f"\nthe other gateway answered {late} request(s) with the session's earlier token before refusing")


def test_a_revoked_api_key_stops_on_every_gateway(sim_stack: RunningStack, other_gateway: str) -> None:
    user = sim_stack.new_user()
    with sim_stack.client() as through_nginx, httpx.Client(base_url=other_gateway, timeout=30) as other:
        created = through_nginx.post("/api/v1/keys", json={"name": "script"}, headers=user.headers)
        assert created.status_code in (200, 201), created.text
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        for client in (through_nginx, other, through_nginx, other):
            assert client.get("/api/v1/me", headers=key).status_code == 200
        key_id = created.json()["id"]
        assert through_nginx.delete(f"/api/v1/keys/{key_id}", headers=user.headers).status_code in (200, 204)
        assert through_nginx.get("/api/v1/me", headers=key).status_code == 401
        _refused_within(other, key, FEED_BOUND_S)


def test_a_user_disabled_from_the_command_line_is_refused(
    sim_stack: RunningStack, other_gateway: str
) -> None:
    victim: User = sim_stack.new_user()
    with sim_stack.client() as through_nginx, httpx.Client(base_url=other_gateway, timeout=30) as other:
        for client in (through_nginx, other, through_nginx, other):
            assert client.get("/api/v1/me", headers=victim.headers).status_code == 200
        # Straight to the database, past every gateway: only the change feed can tell them.
        result = subprocess.run(
            [sys.executable, "-m", "genai_auth.cli", "disable", victim.username],
            env=sim_stack.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        for client in (through_nginx, other):
            _refused_within(client, victim.headers, FEED_BOUND_S)


def test_new_limits_apply_to_a_token_already_cached(sim_stack: RunningStack, other_gateway: str) -> None:
    user = sim_stack.new_user()
    with httpx.Client(base_url=other_gateway, timeout=30) as other:
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
        sim_stack.set_limits(user, requests_per_minute=2)
        deadline = time.monotonic() + FEED_BOUND_S
        codes: list[int] = []
        # The cached answer said 30 a minute. Every ask counts in Redis whichever limit admitted it, so
        # once the new limit is heard the third ask is refused; under the old one they would all pass.
        while time.monotonic() < deadline and 429 not in codes:
            asked = other.post("/ask", json={"prompt": f"limits {len(codes)}"}, headers=user.headers)
            codes.append(asked.status_code)
        assert codes == [200, 200, 429], codes


def test_a_refused_change_does_not_empty_the_cache(sim_stack: RunningStack, other_gateway: str) -> None:
    # Otherwise anyone could flush it by asking to revoke keys that do not exist.
    user = sim_stack.new_user()
    with httpx.Client(base_url=other_gateway, timeout=30) as other:
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
        before = sim_stack.auth_cache_lookups(OTHER)
        missing = other.delete(f"/api/v1/keys/{uuid.uuid4()}", headers=user.headers)
        assert missing.status_code == 404, missing.text
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
        after = sim_stack.auth_cache_lookups(OTHER)
    # The DELETE's own check and the next request's, both from the cache.
    assert after.get("hit", 0) - before.get("hit", 0) == 2
    assert after.get("miss", 0) == before.get("miss", 0)


def test_with_auth_down_no_cached_answer_is_used(sim_stack: RunningStack, other_gateway: str) -> None:
    # Nobody can tell the gateway about a logout while auth is away, so it must not vouch for anyone.
    user = sim_stack.new_user()
    with httpx.Client(base_url=other_gateway, timeout=30) as other:
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
        sim_stack.stop("auth")
        try:
            # The feed's stream ended with auth; the gateway has stopped trusting its cache by the time
            # it has processed that, and then every request asks auth (and gets no answer).
            deadline = time.monotonic() + FEED_BOUND_S
            while _cache_on(sim_stack):
                assert time.monotonic() < deadline, "the gateway still trusts its cache with auth gone"
                time.sleep(0.05)
            refused = other.get("/api/v1/me", headers=user.headers)
        finally:
            sim_stack.start("auth")
            sim_stack.wait_healthy()
        assert refused.status_code == 503, refused.text
        # Back: the feed is heard again and the token works (and is cached) as before.
        deadline = time.monotonic() + FEED_BOUND_S * 2
        while not _cache_on(sim_stack):
            assert time.monotonic() < deadline, "the gateway did not hear auth's change feed again"
            time.sleep(0.1)
        assert other.get("/api/v1/me", headers=user.headers).status_code == 200
