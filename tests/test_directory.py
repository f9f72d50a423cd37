"""Directory sign-in against a real OpenLDAP slapd (LDAPS, test CA, memberOf overlay), through nginx.

A stack of its own on the vLLM simulator: these tests are about who gets in and with what, not about
the model, and they stop the directory.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from genai_auth.directory import DirectoryConfig, DirectoryUnavailable
from genai_auth.directory_client import DirectoryClient
from genai_devstack import infra
from tests.conftest import _own_database
from tests.harness import RunningStack, launch
from tests.slapd import PEOPLE, SERVICE_DN, Slapd, group_dn, slapd_binary

pytestmark = pytest.mark.skipif(
    slapd_binary() is None, reason="slapd is not installed (scripts/install-system-deps.sh)"
)

HEAVY_REQUESTS_PER_MINUTE = 12
TIMEOUT_S = 1.0
PEOPLE_GROUPS = {
    "alice": ["genai-admins"],
    "bob": ["genai-heavy"],
    "carol": ["other-team"],
    "dave": ["genai-users"],
    "erin": ["genai-users", "genai-heavy"],
}


@dataclass
class Directory:
    slapd: Slapd
    stack: RunningStack
    passwords: dict[str, str]

    def token(self, username: str, password: str | None = None) -> httpx.Response:
        with self.stack.client() as client:
            return client.post(
                "/token", json={"username": username, "password": password or self.passwords[username]}
            )


@pytest.fixture(scope="module")
def directory(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[Directory]:
    name = f"directory-{uuid.uuid4().hex[:6]}"
    slapd = Slapd(work_dir / name / "slapd")
    slapd.start()
    try:
        passwords = {uid: secrets.token_urlsafe(12) for uid in PEOPLE_GROUPS}
        members: dict[str, list[str]] = {}
        for uid, groups in PEOPLE_GROUPS.items():
            for group in groups:
                members.setdefault(group, []).append(uid)
        slapd.load(passwords, members)
        groups = {
            group_dn("genai-admins"): {"role": "admin"},
            # Spelled differently from the directory's DNs on purpose: DNs compare case-insensitively.
            group_dn("GenAI-Heavy").upper(): {"limits": {"requests_per_minute": HEAVY_REQUESTS_PER_MINUTE}},
            group_dn("genai-users"): {},
        }
        with _own_database(postgres_server) as database:
            stack = launch(
                work_dir,
                database,
                redis_url.rsplit("/", 1)[0] + "/2",
                upstream="sim",
                upstream_args=["--itl-ms", "1", "--output-tokens", "2"],
                name=name,
                overrides={
                    "GENAI_AUTH_LDAP_URL": slapd.url,
                    "GENAI_AUTH_LDAP_CA_FILE": str(slapd.ca_file),
                    "GENAI_AUTH_LDAP_BIND_DN": SERVICE_DN,
                    "GENAI_AUTH_LDAP_BIND_PASSWORD": slapd.service_password,
                    "GENAI_AUTH_LDAP_USER_BASE_DN": PEOPLE,
                    "GENAI_AUTH_LDAP_GROUPS": json.dumps(groups),
                    "GENAI_AUTH_LDAP_TIMEOUT_S": str(TIMEOUT_S),
                    "GENAI_AUTH_LDAP_SESSION_CHECK_S": "60",
                },
            )
            try:
                yield Directory(slapd, stack, passwords)
            finally:
                stack.stop_all()
    finally:
        slapd.stop()


def test_admin_group_member_gets_an_admin_token_and_is_listed_with_source_and_groups(
    directory: Directory,
) -> None:
    response = directory.token("alice")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "admin"
    # A directory user's access token lives only until the directory is asked again.
    assert body["expires_in"] == 60
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    with directory.stack.client() as client:
        me = client.get("/api/v1/me", headers=headers)
        users = client.get("/api/v1/users", params={"limit": 200}, headers=headers)
    assert me.json()["role"] == "admin"
    alice = next(u for u in users.json()["users"] if u["username"] == "alice")
    assert alice["source"] == "ldap"
    assert alice["directory_groups"] == [group_dn("genai-admins")]


def test_heavy_group_member_gets_its_limits(directory: Directory) -> None:
    response = directory.token("bob")
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "user"
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    statuses = []
    with directory.stack.client() as client:
        for i in range(HEAVY_REQUESTS_PER_MINUTE + 1):
            answer = client.post(
                "/ask", json={"prompt": f"heavy {i} {uuid.uuid4().hex}", "max_tokens": 2}, headers=headers
            )
            statuses.append(answer.status_code)
            if i == 0:
                assert answer.headers["X-RateLimit-Limit"] == str(HEAVY_REQUESTS_PER_MINUTE)
    assert statuses == [200] * HEAVY_REQUESTS_PER_MINUTE + [429]


def test_member_of_several_groups_gets_the_most_generous_grant(directory: Directory) -> None:
    response = directory.token("erin")
    assert response.status_code == 200, response.text
    with directory.stack.client() as client:
        admin = {
            "Authorization": f"Bearer {directory.stack.login(directory.stack.admin_username, directory.stack.admin_password)}"
        }
        users = client.get("/api/v1/users", params={"limit": 200}, headers=admin).json()["users"]
    erin = next(u for u in users if u["username"] == "erin")
    assert erin["directory_groups"] == sorted([group_dn("genai-heavy"), group_dn("genai-users")])
    assert erin["directory_limits"] == {"requests_per_minute": HEAVY_REQUESTS_PER_MINUTE}


def test_member_of_no_mapped_group_is_refused_with_a_clear_403(directory: Directory) -> None:
    response = directory.token("carol")
    assert response.status_code == 403
    assert "none of your directory groups gives access" in response.json()["detail"]


def test_wrong_password_is_401(directory: Directory) -> None:
    response = directory.token("alice", "not-" + directory.passwords["alice"])
    assert response.status_code == 401
    assert response.json()["detail"] == "incorrect username or password"


@pytest.mark.parametrize("username", ["*)(uid=*", "*", "alice)(|(uid=*", "uid=alice," + PEOPLE])
def test_ldap_injection_signs_in_as_nobody(directory: Directory, username: str) -> None:
    response = directory.token(username, directory.passwords["alice"])
    assert response.status_code == 401, response.text


def test_user_removed_from_the_group_loses_access_at_the_next_refresh(directory: Directory) -> None:
    first = directory.token("dave")
    assert first.status_code == 200, first.text
    with directory.stack.client() as client:
        renewed = client.post("/api/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]})
        assert renewed.status_code == 200, renewed.text
        # Sessions end at one-second resolution, and a token of the very second survives (so that a login
        # right after a reset works): the renewal is made an earlier second than the refusal.
        time.sleep(1.1)
        directory.slapd.remove_member("genai-users", "dave")
        refused = client.post("/api/v1/auth/refresh", json={"refresh_token": renewed.json()["refresh_token"]})
        assert refused.status_code == 403
        assert "none of your directory groups" in refused.json()["detail"]
        # The access token issued before the removal ends with it.
        headers = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
        deadline = time.monotonic() + 5
        while (
            me := client.get("/api/v1/me", headers=headers)
        ).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert me.status_code == 401
    assert directory.token("dave").status_code == 403


def test_an_api_key_asks_the_directory_again_and_is_revoked_when_its_owner_lost_access(
    directory: Directory,
) -> None:
    """A directory user's API key lives as long as the directory lets its owner in: once the directory's last
    word is older than a session may last, a use of the key asks again; removed from their groups, the owner
    loses the key (and every other) at once, as a renewal would end their sessions."""
    import asyncpg

    signed_in = directory.token("erin")
    assert signed_in.status_code == 200, signed_in.text
    with directory.stack.client() as client:
        headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        created = client.post("/api/v1/keys", json={"name": "script", "never_expires": True}, headers=headers)
        assert created.status_code in (200, 201), created.text
        key_headers = {"Authorization": f"Bearer {created.json()['key']}"}
        assert client.get("/api/v1/me", headers=key_headers).status_code == 200

        async def age_the_last_check() -> None:
            conn = await asyncpg.connect(directory.stack.cfg.service_database_urls["auth"])
            try:
                await conn.execute(
                    "UPDATE users SET directory_checked_at = now() - interval '1 hour' WHERE username = 'erin'"
                )
            finally:
                await conn.close()

        # Still in the groups: the key is checked with the directory, and goes on working.
        asyncio.run(age_the_last_check())
        assert client.get("/api/v1/me", headers=key_headers).status_code == 200
        directory.slapd.remove_member("genai-users", "erin")
        directory.slapd.remove_member("genai-heavy", "erin")
        asyncio.run(age_the_last_check())
        # The gateway may answer from what it cached for up to its cache's lifetime before auth is asked.
        deadline = time.monotonic() + 15
        while (
            me := client.get("/api/v1/me", headers=key_headers)
        ).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert me.status_code in (401, 403), me.text
        # Revoked, not just refused this once: it stays refused without asking the directory.
        assert client.get("/api/v1/me", headers=key_headers).status_code == 401
    assert directory.token("erin").status_code == 403


def test_directory_down_is_a_quick_503_while_the_local_admin_signs_in(directory: Directory) -> None:
    stack = directory.stack
    assert directory.token("alice").status_code == 200  # a pooled connection exists
    directory.slapd.pause()  # hung: connections are accepted, nothing answers
    try:
        started = time.monotonic()
        hung = directory.token("alice")
        elapsed = time.monotonic() - started
        assert hung.status_code == 503, hung.text
        assert "directory" in hung.json()["detail"]
        assert hung.headers.get("Retry-After")
        assert elapsed < TIMEOUT_S * 2 + 2, elapsed
        assert stack.login(stack.admin_username, stack.admin_password)
    finally:
        directory.slapd.resume()
    directory.slapd.stop()  # gone: connections are refused
    try:
        started = time.monotonic()
        down = directory.token("alice")
        assert down.status_code == 503, down.text
        assert time.monotonic() - started < TIMEOUT_S * 2 + 2
        assert stack.login(stack.admin_username, stack.admin_password)
    finally:
        directory.slapd.start()
    assert directory.token("alice").status_code == 200


def test_start_tls_with_the_ca_checked(directory: Directory) -> None:
    slapd = directory.slapd
    config = DirectoryConfig(
        url=f"ldap://127.0.0.1:{slapd.start_tls_port}",
        start_tls=True,
        ca_file=str(slapd.ca_file),
        bind_dn=SERVICE_DN,
        bind_password=slapd.service_password,
        user_base_dn=PEOPLE,
        timeout_s=TIMEOUT_S,
    )

    async def sign_in(config: DirectoryConfig) -> object:
        client = DirectoryClient(config)
        try:
            return await client.authenticate("erin", directory.passwords["erin"])
        finally:
            client.close()

    found = asyncio.run(sign_in(config))
    assert found is not None and getattr(found, "login", None) == "erin"
    # Another CA: the certificate is refused, and that is an outage, not a wrong password.
    other_ca = slapd.work_dir / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(DirectoryUnavailable):
        asyncio.run(sign_in(DirectoryConfig(**{**config.__dict__, "ca_file": str(other_ca)})))


def test_login_latency_against_slapd(directory: Directory) -> None:
    """Printed, never asserted: the time of a directory login through nginx, gateway and auth."""
    times = []
    with directory.stack.client() as client:
        for _ in range(40):
            started = time.perf_counter()
            response = client.post(
                "/token", json={"username": "alice", "password": directory.passwords["alice"]}
            )
            times.append(time.perf_counter() - started)
            assert response.status_code == 200
            # Under nginx's 10 logins a second per address.
            time.sleep(max(0.0, 0.12 - times[-1]))
    times.sort()
    p50 = statistics.median(times) * 1000
    p95 = times[int(len(times) * 0.95) - 1] * 1000
    print(f"\ndirectory login through nginx, {len(times)} logins: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
