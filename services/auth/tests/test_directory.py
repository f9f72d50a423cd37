"""Directory sign-in against recorded directory answers: the Active Directory specifics that an OpenLDAP
slapd cannot show (nested groups through LDAP_MATCHING_RULE_IN_CHAIN, userPrincipalName and down-level
logon names, continuation references and referrals, userAccountControl, AD's bind refusals), and the
group -> role and limits rule. tests/test_directory.py signs in against a real slapd."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from genai.auth.v1 import auth_pb2
from pydantic import SecretStr, ValidationError

from genai_auth.api_keys import ApiKeyStore
from genai_auth.directory import (
    IN_CHAIN,
    DirectoryConfig,
    DirectoryUnavailable,
    DirectoryUser,
    GroupGrant,
    combine,
    normalize_dn,
)
from genai_auth.directory_client import DirectoryClient
from genai_auth.limiter import LoginLimiter
from genai_auth.revocation import RevocationList
from genai_auth.servicer import AuthServicer
from genai_auth.settings import AuthSettings
from genai_common.redis_guard import RedisGuard

BASE = "DC=corp,DC=example"
ALICE_DN = f"CN=Alice Smith (Sales),OU=Staff,{BASE}"
GROUPS_DN = f"OU=Groups,{BASE}"
ADMINS = f"CN=GenAI-Admins,{GROUPS_DN}"
HEAVY = f"CN=GenAI-Heavy,{GROUPS_DN}"
SALES = f"CN=Sales,{GROUPS_DN}"
# What AD answers a search from the domain's root with, besides the entries (recorded from a 2019 DC).
REFERENCES = [
    {"type": "searchResRef", "uri": [f"ldap://ForestDnsZones.corp.example/DC=ForestDnsZones,{BASE}"]},
    {"type": "searchResRef", "uri": [f"ldap://DomainDnsZones.corp.example/DC=DomainDnsZones,{BASE}"]},
    {"type": "searchResRef", "uri": [f"ldap://corp.example/CN=Configuration,{BASE}"]},
]
SUCCESS = {"result": 0, "description": "success"}
# AD's answer to a wrong password; "data 52e" and the others tell why (775: locked, 533: disabled).
INVALID = {
    "result": 49,
    "description": "invalidCredentials",
    "message": "80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563",
}


def _entry(dn: str, **attributes: Any) -> dict[str, Any]:
    return {"type": "searchResEntry", "dn": dn, "attributes": attributes}


def _alice(**changes: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "sAMAccountName": "alice",
        "userPrincipalName": "alice@corp.example",
        "memberOf": [SALES],
        "userAccountControl": 512,
    }
    return _entry(ALICE_DN, **{**attributes, **changes})


@dataclass
class Recorded:
    """An ldap3 connection that answers searches and binds from recordings and notes what it was asked."""

    searches: list[tuple[list[dict[str, Any]], dict[str, Any]]] = field(default_factory=list)
    password: str = "right-password"
    bind_result: dict[str, Any] | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)
    binds: list[str | None] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=lambda: dict(SUCCESS))
    response: list[dict[str, Any]] | None = None
    closed: bool = False

    def search(self, search_base: str, search_filter: str, **kwargs: Any) -> bool:
        self.asked.append((search_base, search_filter))
        self.response, self.result = self.searches.pop(0)
        return bool(self.result["result"] == 0)

    def rebind(self, user: str | None = None, password: str | None = None, **kwargs: Any) -> bool:
        self.binds.append(user)
        if user != "CN=svc":  # the user's own bind
            if self.bind_result is not None:
                self.result = self.bind_result
            else:
                self.result = SUCCESS if password == self.password else INVALID
        else:
            self.result = SUCCESS
        return bool(self.result["result"] == 0)

    def unbind(self) -> bool:
        self.closed = True
        return True


def _config(**overrides: Any) -> DirectoryConfig:
    values: dict[str, Any] = {
        "url": "ldaps://dc1.corp.example",
        "bind_dn": "CN=svc",
        "bind_password": "svc-password",
        "user_base_dn": BASE,
        "login_attribute": "sAMAccountName",
        "user_filter": "(&(objectCategory=person)(objectClass=user))",
    }
    values.update(overrides)
    return DirectoryConfig(**values)


def _client(conn: Recorded, **overrides: Any) -> DirectoryClient:
    return DirectoryClient(_config(**overrides), connect=lambda: conn)


async def test_nested_groups_come_from_the_in_chain_rule_with_the_dn_escaped() -> None:
    conn = Recorded(
        searches=[
            ([_alice(), *REFERENCES], SUCCESS),
            # Sales is inside GenAI-Heavy, which memberOf alone would never show.
            ([_entry(SALES), _entry(HEAVY), *REFERENCES], SUCCESS),
        ]
    )
    client = _client(conn, nested_groups=True, group_base_dn=GROUPS_DN)
    user = await client.authenticate("alice", "right-password")
    assert user is not None
    assert user.groups == (SALES, HEAVY)
    assert conn.asked[1] == (GROUPS_DN, f"(member:{IN_CHAIN}:=CN=Alice Smith \\28Sales\\29,OU=Staff,{BASE})")
    # The user's own bind, then the service account's again before the connection is reused.
    assert conn.binds == [ALICE_DN, "CN=svc"]
    client.close()


async def test_without_nested_groups_memberof_is_read() -> None:
    conn = Recorded(searches=[([_alice()], SUCCESS)])
    user = await _client(conn).authenticate("alice", "right-password")
    assert user is not None and user.groups == (SALES,)
    assert len(conn.asked) == 1


@pytest.mark.parametrize(
    ("typed", "searched"),
    [
        ("alice", "alice@corp.example"),
        ("CORP\\alice", "alice@corp.example"),
        ("alice@corp.example", "alice@corp.example"),
        # Another UPN suffix of the forest is passed as typed.
        ("alice@sales.corp.example", "alice@sales.corp.example"),
    ],
)
async def test_user_principal_name_forms(typed: str, searched: str) -> None:
    conn = Recorded(searches=[([_alice()], SUCCESS)])
    client = _client(conn, login_attribute="userPrincipalName", upn_suffix="corp.example")
    user = await client.authenticate(typed, "right-password")
    assert user is not None and user.login == "alice@corp.example"
    assert (
        conn.asked[0][1] == f"(&(&(objectCategory=person)(objectClass=user))(userPrincipalName={searched}))"
    )


async def test_down_level_logon_name_for_sam_account_name() -> None:
    conn = Recorded(searches=[([_alice()], SUCCESS)])
    user = await _client(conn).authenticate("CORP\\alice", "right-password")
    assert user is not None and user.login == "alice"
    assert conn.asked[0][1].endswith("(sAMAccountName=alice))")


async def test_filter_special_characters_are_escaped() -> None:
    conn = Recorded(searches=[([], SUCCESS)])
    assert await _client(conn).authenticate("*)(uid=*", "right-password") is None
    assert conn.asked[0][1].endswith("(sAMAccountName=\\2a\\29\\28uid=\\2a))")
    assert conn.binds == []


async def test_only_references_or_a_referral_is_nobody() -> None:
    conn = Recorded(searches=[(list(REFERENCES), SUCCESS)])
    assert await _client(conn).authenticate("alice", "right-password") is None
    referral = {"result": 10, "description": "referral", "referrals": [f"ldap://other.example/{BASE}"]}
    conn = Recorded(searches=[([], referral)])
    assert await _client(conn).authenticate("alice", "right-password") is None
    assert conn.binds == []


async def test_two_entries_for_one_name_is_nobody() -> None:
    conn = Recorded(
        searches=[([_alice(), _entry(f"CN=Alice,OU=Other,{BASE}", sAMAccountName="alice")], SUCCESS)]
    )
    assert await _client(conn).authenticate("alice", "right-password") is None


async def test_wrong_password_disabled_and_locked_are_refusals_not_outages() -> None:
    conn = Recorded(searches=[([_alice()], SUCCESS)])
    assert await _client(conn).authenticate("alice", "wrong") is None
    locked = {**INVALID, "message": INVALID["message"].replace("data 52e", "data 775")}
    conn = Recorded(searches=[([_alice()], SUCCESS)], bind_result=locked)
    assert await _client(conn).authenticate("alice", "right-password") is None


async def test_disabled_in_active_directory_is_seen_by_a_lookup() -> None:
    conn = Recorded(searches=[([_alice(userAccountControl=514)], SUCCESS)])
    found = await _client(conn).lookup("alice")
    assert found is not None and found.disabled


async def test_empty_password_is_never_sent_as_an_anonymous_bind() -> None:
    conn = Recorded(searches=[([_alice()], SUCCESS)])
    assert await _client(conn).authenticate("alice", "") is None
    assert conn.asked == [] and conn.binds == []


async def test_a_busy_directory_is_unavailable() -> None:
    busy = {"result": 51, "description": "busy"}
    conn = Recorded(searches=[([_alice()], SUCCESS), ([_alice()], SUCCESS)], bind_result=busy)
    with pytest.raises(DirectoryUnavailable):
        await _client(conn).authenticate("alice", "right-password")


def test_group_grants_most_generous_wins_admin_if_any() -> None:
    grants = {
        ADMINS: GroupGrant(role="admin"),
        HEAVY: GroupGrant(limits={"requests_per_minute": 300, "tokens_per_day": 2_000_000}),
        SALES: GroupGrant(limits={"requests_per_minute": 60, "tokens_per_day": -1, "concurrent_requests": 4}),
    }
    grant = combine(grants, [SALES.lower(), HEAVY], None)
    assert grant is not None
    assert grant.role == "user"
    assert grant.limits == {"requests_per_minute": 300, "tokens_per_day": -1, "concurrent_requests": 4}
    assert grant.groups == tuple(sorted([SALES.lower(), HEAVY]))
    admin = combine(grants, [HEAVY, ADMINS.replace(",", ", ")], None)
    assert admin is not None and admin.role == "admin"
    assert combine(grants, [f"CN=Other,{GROUPS_DN}"], None) is None
    default = combine(grants, [], "user")
    assert default is not None and (default.role, default.limits, default.groups) == ("user", {}, ())


def test_dns_compare_in_one_spelling() -> None:
    assert normalize_dn("CN=GenAI-Admins, OU=Groups,DC=corp,DC=example") == normalize_dn(ADMINS.lower())


def _settings(**values: Any) -> AuthSettings:
    return AuthSettings(
        GENAI_ENV="dev",
        database_url="postgresql://localhost/x",
        jwt_secret=SecretStr("x" * 40),
        ldap_user_base_dn=BASE,
        **values,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ldap_url": "ldap://dc1.corp.example"}, "plain ldap://"),
        ({"ldap_url": "ldaps://dc1.corp.example", "ldap_start_tls": True}, "ldaps:// is TLS already"),
        ({"ldap_url": "ldaps://dc1", "ldap_bind_dn": "CN=svc"}, "needs GENAI_AUTH_LDAP_BIND_PASSWORD"),
        ({"ldap_url": "ldaps://dc1", "ldap_groups": '{"CN=x": {"role": "root"}}'}, "role must be"),
        (
            {"ldap_url": "ldaps://dc1", "ldap_groups": '{"CN=x": {"limits": {"requests_per_minute": 0}}}'},
            "1 to",
        ),
        ({"ldap_url": "ldaps://dc1", "ldap_nested_groups": True}, "GROUP_BASE_DN"),
    ],
)
def test_settings_refuse_an_unsafe_or_incomplete_directory(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _settings(**values)


def test_plain_ldap_only_when_allowed_and_start_tls_is_secure() -> None:
    assert _settings(ldap_url="ldap://dc1", ldap_allow_plain=True).ldap_url
    assert _settings(ldap_url="ldap://dc1", ldap_start_tls=True).directory_config().secure


# --- the servicer's directory path, with a directory that answers as the test says -------------------


@dataclass
class ScriptedDirectory:
    """Stands in for DirectoryClient in the servicer: who exists, with which password and groups, and
    whether the directory answers at all."""

    people: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    down: bool = False

    def _found(self, username: str) -> DirectoryUser | None:
        if self.down:
            raise DirectoryUnavailable("scripted outage")
        if username not in self.people:
            return None
        return DirectoryUser(f"uid={username},ou=people,{BASE}", username, self.people[username][1])

    async def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        found = self._found(username)
        return found if found and self.people[username][0] == password else None

    async def lookup(self, username: str) -> DirectoryUser | None:
        return self._found(username)

    def close(self) -> None:
        pass


async def test_servicer_provisions_maps_and_rechecks(
    serve: Any, store: Any, pool: Any, tokens: Any, redis_client: Any
) -> None:
    name = f"dir{uuid.uuid4().hex[:8]}"
    directory = ScriptedDirectory({name: ("directory-password", (HEAVY,))})
    guard = RedisGuard()
    servicer = AuthServicer(
        users=store,
        api_keys=ApiKeyStore(pool),
        tokens=tokens,
        revocations=RevocationList(pool, redis_client, guard),
        limiter=LoginLimiter(redis_client, guard, max_per_account=3, max_per_address=6, window_s=60),
        directory=directory,  # type: ignore[arg-type]
        group_grants={HEAVY: GroupGrant(limits={"requests_per_minute": 300})},
        unmapped_role="user",
        directory_session_s=120,
    )
    async with serve(servicer) as stub:
        pair = await stub.Login(auth_pb2.LoginRequest(username=name, password="directory-password"))
        assert (pair.role, pair.expires_in) == ("user", 120)
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token))
        assert principal.limits_json == '{"requests_per_minute":300}'
        user = await store.get_by_username(name)
        assert user is not None and user.from_directory and user.password_hash is None

        # The directory away: a renewal is a 503 that spends nothing; the same refresh token works after.
        directory.down = True
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.refresh_token))
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("genai-caller-message", "1") in tuple(down.value.trailing_metadata() or ())
        directory.down = False
        # Out of the heavy group, into none: with unmapped users let in, a plain user with no group limits.
        directory.people[name] = ("directory-password", ())
        renewed = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=pair.refresh_token))
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=renewed.access_token))
        assert principal.limits_json == "{}"
        # Gone from the directory: the renewal is refused.
        del directory.people[name]
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=renewed.refresh_token))
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED
