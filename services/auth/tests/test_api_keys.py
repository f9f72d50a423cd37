"""API keys: the three RPCs, Authenticate with a key, the store's rules and the admin CLI commands."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from redis.asyncio import Redis

from genai_auth import cli
from genai_auth.api_keys import MAX_ACTIVE_KEYS_PER_USER, ApiKeyStore, InvalidApiKey
from genai_auth.limiter import LoginLimiter
from genai_auth.passwords import Passwords
from genai_auth.revocation import RevocationList
from genai_auth.schema import apply_migrations
from genai_auth.servicer import AuthServicer
from genai_auth.settings import CliSettings
from genai_auth.tokens import ACCESS, Tokens
from genai_auth.users import User, UserStore
from genai_common.db import create_pool
from genai_common.redis_guard import RedisGuard

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub
Serve = Callable[[AuthServicer], AbstractAsyncContextManager[Stub]]
Metadata = tuple[tuple[str, str], ...]

KEY_FORMAT = re.compile(r"^gk-([a-z0-9]{8})_[A-Za-z0-9_-]{43}$")
KEY_LINE = re.compile(r"^key: (\S+)$", re.MULTILINE)
ID_LINE = re.compile(r"^id: (\S+)$", re.MULTILINE)
INVALID = "invalid or expired token"


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def _error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value


def _bearer(credential: str) -> Metadata:
    return (("authorization", f"Bearer {credential}"),)


def _jwt(tokens: Tokens, user: User) -> Metadata:
    token, _ = tokens.issue(user_id=str(user.id), username=user.username, role=user.role, typ=ACCESS)
    return _bearer(token)


async def _create(
    stub: Stub, metadata: Metadata, name: str = "script", **fields: object
) -> auth_pb2.CreatedApiKey:
    return await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(name=name, **fields), metadata=metadata)


async def _principal(stub: Stub, token: str) -> auth_pb2.Principal:
    return await stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))


async def _refused(stub: Stub, token: str) -> None:
    error = await _error(_principal(stub, token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == INVALID


async def _list(stub: Stub, metadata: Metadata, **fields: object) -> list[auth_pb2.ApiKey]:
    """Every page of a listing."""
    keys: list[auth_pb2.ApiKey] = []
    token = ""
    for _ in range(1000):
        page = await stub.ListApiKeys(
            auth_pb2.ListApiKeysRequest(page_token=token, **fields), metadata=metadata
        )
        keys.extend(page.keys)
        token = page.next_page_token
        if not token:
            return keys
    raise AssertionError("paging never ended")


@pytest.fixture
async def user_and_metadata(make_user: MakeUser, tokens: Tokens) -> tuple[User, Metadata]:
    user, _ = await make_user()
    return user, _jwt(tokens, user)


@pytest.fixture
async def admin_jwt(make_user: MakeUser, tokens: Tokens) -> Metadata:
    admin, _ = await make_user("admin")
    return _jwt(tokens, admin)


@pytest.fixture
async def clocked(
    serve: Serve, store: UserStore, pool: asyncpg.Pool, tokens: Tokens, redis_client: Redis
) -> AsyncIterator[tuple[Stub, Clock]]:
    """A servicer whose API keys live by a clock the test moves."""
    clock = Clock()
    guard = RedisGuard()
    servicer = AuthServicer(
        users=store,
        api_keys=ApiKeyStore(pool, clock),
        tokens=tokens,
        revocations=RevocationList(pool, redis_client, guard),
        limiter=LoginLimiter(redis_client, guard, max_per_account=3, max_per_address=6, window_s=60),
    )
    async with serve(servicer) as stub:
        yield stub, clock


async def test_create_shows_the_secret_once_and_stores_only_its_hash(
    stub: Stub, user_and_metadata: tuple[User, Metadata], pool: asyncpg.Pool
) -> None:
    user, metadata = user_and_metadata
    before = int(time.time())
    created = await _create(stub, metadata, name="  nightly report  ")
    match = KEY_FORMAT.match(created.secret)
    assert match, created.secret
    key = created.key
    assert uuid.UUID(key.id)
    assert (key.name, key.prefix, key.owner_username) == ("nightly report", match.group(1), user.username)
    assert before <= key.created_at <= int(time.time())
    # A lifetime by default (90 days), and the user scope.
    assert (key.last_used_at, key.expires_at - key.created_at, key.revoked) == (0, 90 * 86_400, False)
    assert key.scope == "user"

    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", uuid.UUID(key.id))
    assert row is not None
    assert row["user_id"] == user.id and row["prefix"] == key.prefix
    assert bytes(row["key_hash"]) == hashlib.sha256(created.secret.encode()).digest()
    random_part = created.secret.split("_", 1)[1]
    for column, value in row.items():
        assert random_part not in str(value), column
        assert random_part.encode() not in (value if isinstance(value, bytes) else b""), column

    # Nothing else ever shows the secret again.
    listed = await stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=metadata)
    assert [k.id for k in listed.keys] == [key.id]
    assert random_part.encode() not in listed.SerializeToString()
    revoked = await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=key.id), metadata=metadata)
    assert random_part.encode() not in revoked.SerializeToString()

    other = await _create(stub, metadata)
    assert other.secret != created.secret and other.key.prefix != key.prefix


async def test_authenticate_with_a_key(
    stub: Stub, user_and_metadata: tuple[User, Metadata], tokens: Tokens
) -> None:
    user, metadata = user_and_metadata
    forever = await _create(stub, metadata, never_expires=True)
    principal = await _principal(stub, forever.secret)
    assert (principal.user_id, principal.username, principal.role) == (str(user.id), user.username, "user")
    assert principal.api_key_id == forever.key.id
    assert principal.expires_at == 0

    limited = await _create(stub, metadata, expires_in_s=3600)
    assert limited.key.expires_at == limited.key.created_at + 3600
    principal = await _principal(stub, limited.secret)
    assert principal.expires_at == limited.key.expires_at
    assert principal.api_key_id == limited.key.id

    # The JWT path is unchanged and says it is not a key.
    principal = await _principal(stub, metadata[0][1].removeprefix("Bearer "))
    assert principal.username == user.username and principal.api_key_id == ""


async def test_wrong_or_malformed_keys_refused(stub: Stub, user_and_metadata: tuple[User, Metadata]) -> None:
    _, metadata = user_and_metadata
    secret = (await _create(stub, metadata)).secret
    head, random_part = secret.split("_", 1)
    flipped = random_part[:-1] + ("A" if random_part[-1] != "A" else "B")
    for bad in [
        f"{head}_{flipped}",  # the right prefix with a wrong secret
        f"gk-{uuid.uuid4().hex[:8]}_{random_part}",  # a right secret under another prefix
        secret[:-1],
        secret + "A",
        secret.upper(),
        f" {secret}",
        "gk-",
        "gk-" + "x" * 10_000,
    ]:
        await _refused(stub, bad)
    await _principal(stub, secret)


async def test_revoked_key_stops_at_once(stub: Stub, user_and_metadata: tuple[User, Metadata]) -> None:
    _, metadata = user_and_metadata
    created = await _create(stub, metadata)
    await _principal(stub, created.secret)
    revoked = await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.key.id), metadata=metadata)
    assert revoked.key.revoked and revoked.key.id == created.key.id
    await _refused(stub, created.secret)
    # As a credential for the key RPCs too.
    error = await _error(stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=_bearer(created.secret)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # Revoking again is harmless.
    again = await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.key.id), metadata=metadata)
    assert again.key.revoked


async def test_expired_key_refused(
    clocked: tuple[Stub, Clock], user_and_metadata: tuple[User, Metadata]
) -> None:
    stub, clock = clocked
    _, metadata = user_and_metadata
    created = await _create(stub, metadata, expires_in_s=600)
    clock.now += 599
    await _principal(stub, created.secret)
    clock.now += 1
    await _refused(stub, created.secret)
    # Listed still, so its owner sees that it ran out.
    assert [k.id for k in await _list(stub, metadata)] == [created.key.id]


async def test_disabled_owner_keys_refused(
    stub: Stub, user_and_metadata: tuple[User, Metadata], store: UserStore, admin_jwt: Metadata
) -> None:
    user, metadata = user_and_metadata
    created = await _create(stub, metadata)
    await stub.SetUserDisabled(
        auth_pb2.SetUserDisabledRequest(username=user.username, disabled=True), metadata=admin_jwt
    )
    await _refused(stub, created.secret)
    error = await _error(_create(stub, admin_jwt, owner_username=user.username))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Disabling is not revoking: the key is back when the account is.
    await store.set_disabled(user.username, False)
    assert (await _principal(stub, created.secret)).api_key_id == created.key.id


async def test_deleted_owner_takes_keys_along(
    stub: Stub, user_and_metadata: tuple[User, Metadata], pool: asyncpg.Pool
) -> None:
    user, metadata = user_and_metadata
    created = await _create(stub, metadata)
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user.id) == 0
    await _refused(stub, created.secret)


async def test_key_works_as_a_credential(stub: Stub, make_user: MakeUser, tokens: Tokens) -> None:
    user, password = await make_user()
    created = await _create(stub, _jwt(tokens, user))
    by_key = _bearer(created.secret)
    # A key is no sign-in: minting another with it takes the owner's password.
    error = await _error(_create(stub, by_key, name="made with a key"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    second = await _create(stub, by_key, name="made with a key", password=password)
    assert second.key.owner_username == user.username
    assert {k.id for k in await _list(stub, by_key)} == {created.key.id, second.key.id}
    # A key may revoke itself, after which it is worth nothing.
    await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=created.key.id), metadata=by_key)
    await _refused(stub, created.secret)
    error = await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=by_key))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # An admin's key asked for with the admin scope carries the admin role, for the admin RPCs too.
    admin, _ = await make_user("admin")
    admin_key = await _create(stub, _jwt(tokens, admin), scope="admin")
    assert (await _principal(stub, admin_key.secret)).role == "admin"
    await stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=_bearer(admin_key.secret))
    error = await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=_bearer(second.secret)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    "call",
    [
        lambda s, m: s.CreateApiKey(auth_pb2.CreateApiKeyRequest(name="x"), metadata=m),
        lambda s, m: s.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=m),
        lambda s, m: s.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=str(uuid.uuid4())), metadata=m),
    ],
    ids=["CreateApiKey", "ListApiKeys", "RevokeApiKey"],
)
async def test_key_rpcs_need_a_credential(
    stub: Stub, call: Callable[[Stub, Metadata], Awaitable[object]]
) -> None:
    for metadata in [(), (("authorization", "Basic abc"),), _bearer("not-a-token"), _bearer("gk-abcdefgh_x")]:
        error = await _error(call(stub, metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata


async def test_list_own_and_others(
    stub: Stub, make_user: MakeUser, tokens: Tokens, admin_jwt: Metadata
) -> None:
    alice, _ = await make_user()
    bob, _ = await make_user()
    as_alice, as_bob = _jwt(tokens, alice), _jwt(tokens, bob)
    alices = [(await _create(stub, as_alice, name=f"a{i}")).key.id for i in range(3)]
    bobs = [(await _create(stub, as_bob, name="b")).key.id]

    assert [k.id for k in await _list(stub, as_alice)] == alices
    assert [k.id for k in await _list(stub, as_alice, owner_username=alice.username.upper())] == alices
    for other in [bob.username, "*", f"nobody-{uuid.uuid4().hex[:8]}"]:
        error = await _error(
            stub.ListApiKeys(auth_pb2.ListApiKeysRequest(owner_username=other), metadata=as_alice)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, other

    assert [k.id for k in await _list(stub, admin_jwt, owner_username=bob.username)] == bobs
    everyone = await _list(stub, admin_jwt, owner_username="*", page_size=2)
    ids = [k.id for k in everyone]
    assert len(ids) == len(set(ids)), "a key appeared on two pages"
    assert set(alices + bobs) <= set(ids)
    assert {k.owner_username for k in everyone if k.id in alices} == {alice.username}
    error = await _error(
        stub.ListApiKeys(auth_pb2.ListApiKeysRequest(owner_username="nobody-at-all"), metadata=admin_jwt)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    # Paging one by one gives the same keys, oldest first.
    assert [k.id for k in await _list(stub, as_alice, page_size=1)] == alices

    await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=alices[1]), metadata=as_alice)
    assert [k.id for k in await _list(stub, as_alice)] == [alices[0], alices[2]]
    with_revoked = await _list(stub, as_alice, include_revoked=True)
    assert [(k.id, k.revoked) for k in with_revoked] == [
        (alices[0], False),
        (alices[1], True),
        (alices[2], False),
    ]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_token": "%%%"}, "page_token"),
        ({"page_token": "bm9wZQ"}, "page_token"),
    ],
)
async def test_list_bad_arguments(
    stub: Stub, user_and_metadata: tuple[User, Metadata], fields: dict[str, object], complaint: str
) -> None:
    _, metadata = user_and_metadata
    error = await _error(stub.ListApiKeys(auth_pb2.ListApiKeysRequest(**fields), metadata=metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (error.details() or "")


async def test_create_for_another_user(
    stub: Stub, make_user: MakeUser, tokens: Tokens, admin_jwt: Metadata
) -> None:
    alice, _ = await make_user()
    bob, _ = await make_user()
    error = await _error(_create(stub, _jwt(tokens, alice), owner_username=bob.username))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await _list(stub, _jwt(tokens, bob)) == []

    created = await _create(stub, admin_jwt, name="for bob", owner_username=bob.username.upper())
    assert created.key.owner_username == bob.username
    principal = await _principal(stub, created.secret)
    assert (principal.username, principal.role) == (bob.username, "user")
    assert [k.id for k in await _list(stub, _jwt(tokens, bob))] == [created.key.id]

    error = await _error(_create(stub, admin_jwt, owner_username=f"nobody-{uuid.uuid4().hex[:8]}"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"name": ""}, "name must be 1 to 100"),
        ({"name": "   "}, "name must be 1 to 100"),
        ({"name": "x" * 101}, "name must be 1 to 100"),
        ({"name": "two\nlines"}, "printable"),
        ({"name": "ok", "expires_in_s": -1}, "expires_in_s"),
        ({"name": "ok", "expires_in_s": 2**62}, "expires_in_s"),
    ],
)
async def test_create_validation(
    stub: Stub, user_and_metadata: tuple[User, Metadata], fields: dict[str, object], complaint: str
) -> None:
    _, metadata = user_and_metadata
    error = await _error(stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(**fields), metadata=metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (error.details() or "")
    assert await _list(stub, metadata) == []
    assert (await _create(stub, metadata, name="é" * 100)).key.name == "é" * 100


async def test_revoke_rules(stub: Stub, make_user: MakeUser, tokens: Tokens, admin_jwt: Metadata) -> None:
    alice, _ = await make_user()
    bob, _ = await make_user()
    as_alice, as_bob = _jwt(tokens, alice), _jwt(tokens, bob)
    bobs = await _create(stub, as_bob)

    for key_id in [bobs.key.id, str(uuid.uuid4())]:
        error = await _error(stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=key_id), metadata=as_alice))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "API key not found"
    await _principal(stub, bobs.secret)
    assert not (await _list(stub, as_bob))[0].revoked

    error = await _error(stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id="not-a-uuid"), metadata=as_alice))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    revoked = await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=bobs.key.id), metadata=admin_jwt)
    assert (revoked.key.owner_username, revoked.key.revoked) == (bob.username, True)
    await _refused(stub, bobs.secret)


async def test_active_key_limit(
    stub: Stub, clocked: tuple[Stub, Clock], user_and_metadata: tuple[User, Metadata]
) -> None:
    _, metadata = user_and_metadata
    keys = [(await _create(stub, metadata, name=f"k{i}")).key for i in range(MAX_ACTIVE_KEYS_PER_USER - 1)]
    timed, clock = clocked
    short_lived = await _create(timed, metadata, name="short", expires_in_s=60)
    error = await _error(_create(stub, metadata))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        f"user {user_and_metadata[0].username!r} already has {MAX_ACTIVE_KEYS_PER_USER} active API keys; "
        "revoke one first"
    )
    # Revoked and expired keys do not count.
    await stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=keys[0].id), metadata=metadata)
    await _create(stub, metadata)
    assert (await _error(_create(timed, metadata))).code() == grpc.StatusCode.FAILED_PRECONDITION
    clock.now += 60
    await _principal(stub, (await _create(timed, metadata)).secret)
    assert short_lived.key.id in {k.id for k in await _list(stub, metadata)}


async def test_last_used_written_at_most_once_a_minute(
    clocked: tuple[Stub, Clock], user_and_metadata: tuple[User, Metadata], pool: asyncpg.Pool
) -> None:
    stub, clock = clocked
    _, metadata = user_and_metadata
    created = await _create(stub, metadata)
    key_id = uuid.UUID(created.key.id)

    async def last_used() -> datetime | None:
        return await pool.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)

    assert await last_used() is None
    clock.now += 5
    first = clock.now
    await _principal(stub, created.secret)
    assert await last_used() == datetime.fromtimestamp(first, UTC)
    assert (await _list(stub, metadata))[0].last_used_at == int(first)

    for step in (10, 20, 29.9):  # 59.9 seconds after the recorded use
        clock.now += step
        await _principal(stub, created.secret)
        assert await last_used() == datetime.fromtimestamp(first, UTC)
    clock.now += 0.1
    await _principal(stub, created.secret)
    assert await last_used() == datetime.fromtimestamp(clock.now, UTC)

    # A failed attempt records nothing.
    clock.now += 120
    await _refused(stub, created.secret[:-1] + ("A" if created.secret[-1] != "A" else "B"))
    assert await last_used() != datetime.fromtimestamp(clock.now, UTC)


async def test_store_authenticate_reasons(pool: asyncpg.Pool, make_user: MakeUser, store: UserStore) -> None:
    """The store tells the servicer why a key failed (for debug logs), while callers see one message."""
    user, _ = await make_user()
    clock = Clock()
    keys = ApiKeyStore(pool, clock)
    created = await keys.create(user, "store", expires_in_s=10)
    key, owner = await keys.authenticate(created.secret)
    assert (key.id, owner.id, owner.role) == (created.key.id, user.id, "user")
    cases = [
        (created.secret.replace("_", "-", 1), "malformed"),
        ("gk-00000000_" + created.secret.split("_", 1)[1], "unknown"),
        (
            created.secret[:-2] + "AA" if not created.secret.endswith("AA") else created.secret[:-2] + "BB",
            "wrong",
        ),
    ]
    for bad, reason in cases:
        with pytest.raises(InvalidApiKey, match=reason):
            await keys.authenticate(bad)
    await store.set_disabled(user.username, True)
    with pytest.raises(InvalidApiKey, match="disabled"):
        await keys.authenticate(created.secret)
    await store.set_disabled(user.username, False)
    clock.now += 10
    with pytest.raises(InvalidApiKey, match="expired"):
        await keys.authenticate(created.secret)
    await keys.revoke(created.key.id)
    with pytest.raises(InvalidApiKey, match="revoked"):
        await keys.authenticate(created.secret)


# --- the admin CLI ----------------------------------------------------------------------------------


@pytest.fixture
async def cli_db(new_database_dsn: str) -> AsyncIterator[tuple[CliSettings, UserStore, ApiKeyStore]]:
    await apply_migrations(new_database_dsn)
    settings = CliSettings(
        GENAI_ENV="dev",
        database_url=new_database_dsn,
        argon2_time_cost=1,
        argon2_memory_cost=64,
        argon2_parallelism=1,
    )
    pool = await create_pool(new_database_dsn, max_size=2)
    yield settings, UserStore(pool, Passwords.from_settings(settings)), ApiKeyStore(pool)
    await pool.close()


async def test_cli_api_key_commands(
    cli_db: tuple[CliSettings, UserStore, ApiKeyStore], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, users, keys = cli_db
    parse = cli.build_parser().parse_args
    await users.create("carol", "carol-password")
    await users.create("dave", "dave-password")

    assert (
        await cli.run(
            parse(["create-api-key", "Carol", "--name", "ci pipeline", "--never-expires"]), settings
        )
        == 0
    )
    out = capsys.readouterr().out
    key_line, id_line = KEY_LINE.search(out), ID_LINE.search(out)
    assert key_line and id_line, out
    secret, key_id = key_line.group(1), id_line.group(1)
    assert KEY_FORMAT.match(secret)
    assert "created API key 'ci pipeline' for user 'carol'" in out
    assert "expires: never" in out and "shown only once" in out
    key, owner = await keys.authenticate(secret)
    assert (str(key.id), owner.username, key.expires_at) == (key_id, "carol", None)

    assert (
        await cli.run(parse(["create-api-key", "dave", "--name", "x", "--expires-days", "7"]), settings) == 0
    )
    out = capsys.readouterr().out
    dave_secret = KEY_LINE.search(out)
    assert dave_secret and "expires: never" not in out
    dave_key, _ = await keys.authenticate(dave_secret.group(1))
    assert dave_key.expires_at is not None
    assert 7 * 86_400 - 5 <= (dave_key.expires_at - dave_key.created_at).total_seconds() <= 7 * 86_400

    assert await cli.run(parse(["list-api-keys"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "PREFIX",
        "OWNER",
        "STATUS",
        "CREATED",
        "LAST",
        "USED",
        "EXPIRES",
        "NAME",
    ]
    assert [(line.split()[0], line.split()[2], line.split()[3]) for line in lines[1:]] == [
        (key_id, "carol", "active"),
        (str(dave_key.id), "dave", "active"),
    ]
    assert lines[1].endswith(" ci pipeline") and f"gk-{key.prefix}" in lines[1]
    assert all(secret not in line and dave_secret.group(1) not in line for line in lines)

    assert await cli.run(parse(["revoke-api-key", key_id]), settings) == 0
    assert "revoked API key 'ci pipeline' of user 'carol'" in capsys.readouterr().out
    with pytest.raises(InvalidApiKey, match="revoked"):
        await keys.authenticate(secret)
    assert await cli.run(parse(["revoke-api-key", key_id]), settings) == 0
    assert "revoked already" in capsys.readouterr().out

    assert await cli.run(parse(["list-api-keys", "carol"]), settings) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert await cli.run(parse(["list-api-keys", "carol", "--include-revoked"]), settings) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[3] for row in rows] == ["revoked"]


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["create-api-key", "nobody", "--name", "x"], "no user named 'nobody'"),
        (["create-api-key", "carol", "--name", ""], "name must be 1 to 100"),
        (
            ["create-api-key", "carol", "--name", "x", "--expires-days", "0"],
            "--expires-days must be at least 1",
        ),
        (["list-api-keys", "nobody"], "no user named 'nobody'"),
        (["revoke-api-key", "not-a-uuid"], "is not an API key id"),
        (["revoke-api-key", "00000000-0000-4000-8000-000000000000"], "no API key with id"),
    ],
)
async def test_cli_api_key_errors(
    cli_db: tuple[CliSettings, UserStore, ApiKeyStore],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    complaint: str,
) -> None:
    settings, users, _ = cli_db
    await users.create("carol", "carol-password")
    assert await cli.run(cli.build_parser().parse_args(argv), settings) == 1
    captured = capsys.readouterr()
    assert complaint in captured.err
    assert "key:" not in captured.out


async def test_cli_refuses_keys_for_a_disabled_user(
    cli_db: tuple[CliSettings, UserStore, ApiKeyStore], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, users, keys = cli_db
    await users.create("erin", "erin-password")
    await users.set_disabled("erin", True)
    assert (
        await cli.run(cli.build_parser().parse_args(["create-api-key", "erin", "--name", "x"]), settings) == 1
    )
    assert "disabled" in capsys.readouterr().err
    assert await keys.list_page(None, limit=10) == []


# --- part of a session's rules: keys expire, carry a scope, and need the password -----------------------


def _stale_token(tokens: Tokens, user: User) -> str:
    """An access token of a sign-in long ago, renewed since: not enough alone for a lasting credential."""
    token, _ = tokens.issue(
        user_id=str(user.id),
        username=user.username,
        role=user.role,
        typ=ACCESS,
        auth_time=int(time.time()) - 3600,
    )
    return token


async def test_a_stale_token_needs_the_password_to_mint_a_key(
    stub: Stub, make_user: MakeUser, tokens: Tokens
) -> None:
    user, password = await make_user()
    stale = _stale_token(tokens, user)
    error = await _error(_create(stub, _bearer(stale)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs your password" in (error.details() or "")
    wrong = await _error(_create(stub, _bearer(stale), password="not-" + password))
    assert (wrong.code(), wrong.details()) == (grpc.StatusCode.PERMISSION_DENIED, "the password is incorrect")
    created = await _create(stub, _bearer(stale), password=password)
    assert created.key.owner_username == user.username


async def test_a_stale_token_needs_the_password_to_make_a_telegram_link_code(
    stub: Stub, make_user: MakeUser, tokens: Tokens
) -> None:
    """A Telegram link is a key that never expires: its code is minted on the same terms as a key."""
    user, password = await make_user()
    stale = _stale_token(tokens, user)

    def make(password: str = "") -> Awaitable[auth_pb2.TelegramLinkCode]:
        return stub.CreateTelegramLinkCode(
            auth_pb2.CreateTelegramLinkCodeRequest(password=password), metadata=_bearer(stale)
        )

    error = await _error(make())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "needs your password" in (error.details() or "")
    wrong = await _error(make("not-" + password))
    assert (wrong.code(), wrong.details()) == (grpc.StatusCode.PERMISSION_DENIED, "the password is incorrect")
    assert (await make(password)).code


async def test_never_expiring_only_when_asked_and_not_with_a_lifetime(
    stub: Stub, user_and_metadata: tuple[User, Metadata]
) -> None:
    _, metadata = user_and_metadata
    assert (await _create(stub, metadata, never_expires=True)).key.expires_at == 0
    error = await _error(_create(stub, metadata, never_expires=True, expires_in_s=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_admins_key_is_user_scoped_unless_asked(
    stub: Stub, make_user: MakeUser, tokens: Tokens, admin_jwt: Metadata
) -> None:
    plain = await _create(stub, admin_jwt)
    assert plain.key.scope == "user"
    assert (await _principal(stub, plain.secret)).role == "user"
    error = await _error(stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=_bearer(plain.secret)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nor can a user-scoped key mint an admin one.
    _, admin_password = await make_user("admin")
    error = await _error(_create(stub, _bearer(plain.secret), scope="admin", password="x" * 12))
    assert error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    # A user cannot ask for the admin scope.
    user, _ = await make_user()
    error = await _error(_create(stub, _jwt(tokens, user), scope="admin"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cli_keys_expire_by_default_and_are_user_scoped(
    cli_db: tuple[CliSettings, UserStore, ApiKeyStore], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, users, keys = cli_db
    parse = cli.build_parser().parse_args
    await users.create("erin", "erin-password", "admin")
    assert await cli.run(parse(["create-api-key", "erin", "--name", "nightly"]), settings) == 0
    out = capsys.readouterr().out
    secret = KEY_LINE.search(out)
    assert secret and "expires: never" not in out and "scope: user" in out
    key, owner = await keys.authenticate(secret.group(1))
    assert key.expires_at is not None and (key.expires_at - key.created_at).days == 90
    assert owner.role == "user"  # an admin's key acts as a user unless asked
    assert (
        await cli.run(parse(["create-api-key", "erin", "--name", "ops", "--scope", "admin"]), settings) == 0
    )
    admin_secret = KEY_LINE.search(capsys.readouterr().out)
    assert admin_secret and (await keys.authenticate(admin_secret.group(1)))[1].role == "admin"
