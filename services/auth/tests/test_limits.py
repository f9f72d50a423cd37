"""Per-user limit overrides: the JSON contract, SetUserLimits, the fields that carry them, the CLI and the
migration that adds the column."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc

from genai_auth import cli
from genai_auth.limits import InvalidLimits, dump_limits, parse_limits
from genai_auth.passwords import Passwords
from genai_auth.schema import COMPONENT, MIGRATIONS_DIR, apply_migrations
from genai_auth.settings import CliSettings
from genai_auth.tokens import ACCESS, Tokens
from genai_auth.users import User, UserStore
from genai_common.db import create_pool, migrate

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub
Metadata = tuple[tuple[str, str], ...]

FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 64, "argon2_parallelism": 1}


async def _error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value


def _jwt(tokens: Tokens, user: User) -> str:
    token, _ = tokens.issue(user_id=str(user.id), username=user.username, role=user.role, typ=ACCESS)
    return token


def _bearer(credential: str) -> Metadata:
    return (("authorization", f"Bearer {credential}"),)


def _set(stub: Stub, metadata: Metadata, username: str, limits_json: str) -> Awaitable[auth_pb2.User]:
    return stub.SetUserLimits(
        auth_pb2.SetUserLimitsRequest(username=username, limits_json=limits_json), metadata=metadata
    )


# --- the contract, without a server ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        (" { } ", {}),
        ('{"requests_per_minute": 60}', {"requests_per_minute": 60}),
        (
            '{"tokens_per_day": -1, "concurrent_requests": 1, "tokens_per_minute": 1000000000, '
            '"requests_per_minute": 5}',
            {
                "requests_per_minute": 5,
                "tokens_per_minute": 1_000_000_000,
                "concurrent_requests": 1,
                "tokens_per_day": -1,
            },
        ),
    ],
)
def test_valid_limits(text: str, expected: dict[str, int]) -> None:
    assert parse_limits(text) == expected


def test_dump_is_compact_with_sorted_keys() -> None:
    parsed = parse_limits('{"tokens_per_day": -1, "concurrent_requests": 2}')
    assert dump_limits(parsed) == '{"concurrent_requests":2,"tokens_per_day":-1}'
    assert dump_limits({}) == "{}"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('{"requests_per_hour": 5}', "unknown limit 'requests_per_hour'; known limits: requests_per_minute"),
        ('{"Requests_Per_Minute": 5}', "unknown limit 'Requests_Per_Minute'"),
        (
            '{"requests_per_minute": -2}',
            "requests_per_minute must be 1 to 1000000000, or -1 for unlimited; got -2",
        ),
        ('{"tokens_per_day": 0}', "tokens_per_day must be 1 to 1000000000, or -1 for unlimited; got 0"),
        ('{"tokens_per_day": 1000000001}', "must be 1 to 1000000000, or -1 for unlimited; got 1000000001"),
        ('{"tokens_per_minute": 1.5}', "tokens_per_minute must be an integer, not 1.5"),
        ('{"tokens_per_minute": 5.0}', "tokens_per_minute must be an integer, not 5.0"),
        ('{"tokens_per_minute": 1e3}', "tokens_per_minute must be an integer"),
        ('{"concurrent_requests": true}', "concurrent_requests must be an integer, not true"),
        ('{"concurrent_requests": "5"}', 'concurrent_requests must be an integer, not "5"'),
        ('{"concurrent_requests": null}', "concurrent_requests must be an integer, not null"),
        ('{"concurrent_requests": [5]}', "concurrent_requests must be an integer"),
        ('{"concurrent_requests": NaN}', "may not contain NaN"),
        ('{"concurrent_requests": Infinity}', "may not contain Infinity"),
        ('{"requests_per_minute": 5, "requests_per_minute": 6}', "limit 'requests_per_minute' given twice"),
        ("[]", "limits_json must be a JSON object"),
        ("60", "limits_json must be a JSON object"),
        ("null", "limits_json must be a JSON object"),
        ("{'requests_per_minute': 5}", "limits_json is not valid JSON"),
        ('{"requests_per_minute": 5', "limits_json is not valid JSON"),
        ("", "limits_json is empty; send {} to clear the overrides"),
        ("   ", "limits_json is empty"),
        ("{" + " " * 1024 + "}", "limits_json must be at most 1024 characters"),
    ],
)
def test_invalid_limits(text: str, complaint: str) -> None:
    with pytest.raises(InvalidLimits) as refused:
        parse_limits(text)
    assert complaint in str(refused.value)


async def test_store_refuses_invalid_limits_too(store: UserStore, make_user: MakeUser) -> None:
    user, _ = await make_user()
    with pytest.raises(InvalidLimits):
        await store.set_limits(user.username, {"requests_per_minute": 0})
    stored = await store.get_by_username(user.username)
    assert stored is not None and stored.limits == {}


# --- SetUserLimits ------------------------------------------------------------------------------


async def test_set_replace_and_clear(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, store: UserStore, pool: asyncpg.Pool
) -> None:
    user, _ = await make_user()
    assert (await store.get_by_username(user.username)).limits == {}  # type: ignore[union-attr]

    changed = await _set(
        stub, admin_metadata, user.username.upper(), '{"tokens_per_day": -1, "requests_per_minute": 7}'
    )
    assert changed.username == user.username
    assert changed.limits_json == '{"requests_per_minute":7,"tokens_per_day":-1}'
    stored = await pool.fetchval("SELECT limits FROM users WHERE id = $1", user.id)
    assert json.loads(stored) == {"requests_per_minute": 7, "tokens_per_day": -1}

    # The new object replaces the old one: tokens_per_day goes back to the role's default.
    changed = await _set(stub, admin_metadata, user.username, '{"concurrent_requests": 2}')
    assert changed.limits_json == '{"concurrent_requests":2}'
    assert (await store.get_by_username(user.username)).limits == {"concurrent_requests": 2}  # type: ignore[union-attr]

    cleared = await _set(stub, admin_metadata, user.username, "{}")
    assert cleared.limits_json == "{}"
    assert json.loads(await pool.fetchval("SELECT limits FROM users WHERE id = $1", user.id)) == {}


@pytest.mark.parametrize(
    ("limits_json", "complaint"),
    [
        ('{"requests_per_day": 5}', "unknown limit 'requests_per_day'"),
        ('{"requests_per_minute": -5}', "requests_per_minute must be 1 to 1000000000, or -1 for unlimited"),
        ('{"requests_per_minute": 0}', "requests_per_minute must be 1 to 1000000000, or -1 for unlimited"),
        ('{"tokens_per_minute": 2.5}', "tokens_per_minute must be an integer"),
        ('{"tokens_per_minute": "100"}', "tokens_per_minute must be an integer"),
        ('{"tokens_per_day": 1000000001}', "tokens_per_day must be 1 to 1000000000"),
        ("not json", "limits_json is not valid JSON"),
        ("", "limits_json is empty"),
    ],
)
async def test_set_validation(
    stub: Stub,
    admin_metadata: Metadata,
    make_user: MakeUser,
    store: UserStore,
    limits_json: str,
    complaint: str,
) -> None:
    user, _ = await make_user()
    await _set(stub, admin_metadata, user.username, '{"tokens_per_day": 500}')
    error = await _error(_set(stub, admin_metadata, user.username, limits_json))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (error.details() or "")
    # A refused request changes nothing.
    assert (await store.get_by_username(user.username)).limits == {"tokens_per_day": 500}  # type: ignore[union-attr]


async def test_set_limits_bounds_are_inclusive(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    changed = await _set(
        stub, admin_metadata, user.username, '{"requests_per_minute": 1, "tokens_per_day": 1000000000}'
    )
    assert json.loads(changed.limits_json) == {"requests_per_minute": 1, "tokens_per_day": 1_000_000_000}


async def test_set_limits_unknown_user(stub: Stub, admin_metadata: Metadata) -> None:
    error = await _error(_set(stub, admin_metadata, f"n-{uuid.uuid4().hex[:12]}", "{}"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_set_limits_needs_an_admin(
    stub: Stub, make_user: MakeUser, store: UserStore, tokens: Tokens
) -> None:
    target, _ = await make_user()
    plain, _ = await make_user()
    own_key = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name="script"), metadata=_bearer(_jwt(tokens, plain))
    )
    # A plain user may not raise anyone's limits, their own included, whatever credential they show.
    for metadata in (_bearer(_jwt(tokens, plain)), _bearer(own_key.secret)):
        for username in (target.username, plain.username):
            error = await _error(_set(stub, metadata, username, '{"requests_per_minute": -1}'))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == "this operation requires the admin role"
        # Checked before the body: a non-admin learns nothing from the validation either.
        error = await _error(_set(stub, metadata, target.username, "not json"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await _error(_set(stub, (), target.username, "{}"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    for user in (target, plain):
        assert (await store.get_by_username(user.username)).limits == {}  # type: ignore[union-attr]


async def test_admin_may_use_an_api_key(stub: Stub, make_user: MakeUser, tokens: Tokens) -> None:
    admin, _ = await make_user("admin")
    key = await stub.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name="ops", scope="admin"), metadata=_bearer(_jwt(tokens, admin))
    )
    user, _ = await make_user()
    changed = await _set(stub, _bearer(key.secret), user.username, '{"concurrent_requests": 3}')
    assert changed.limits_json == '{"concurrent_requests":3}'


# --- where the overrides show up ------------------------------------------------------------------


async def test_authenticate_returns_the_limits_on_both_paths(
    stub: Stub, admin_metadata: Metadata, make_user: MakeUser, tokens: Tokens
) -> None:
    user, _ = await make_user()
    token = _jwt(tokens, user)
    key = (await stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(name="s"), metadata=_bearer(token))).secret

    for credential in (token, key):
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=credential))
        assert principal.limits_json == "{}"

    await _set(stub, admin_metadata, user.username, '{"tokens_per_minute": 900, "concurrent_requests": -1}')
    # Read from the user's row on every call: a token issued before the change sees it at once.
    for credential in (token, key):
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=credential))
        assert principal.username == user.username
        assert principal.limits_json == '{"concurrent_requests":-1,"tokens_per_minute":900}'
    assert principal.api_key_id


async def test_user_messages_carry_the_limits(stub: Stub, admin_metadata: Metadata) -> None:
    name = f"n-{uuid.uuid4().hex[:12]}"
    created = await stub.CreateUser(
        auth_pb2.CreateUserRequest(username=name, password="long-enough-pw"), metadata=admin_metadata
    )
    assert created.limits_json == "{}"
    await _set(stub, admin_metadata, name, '{"requests_per_minute": 12}')

    disabled = await stub.SetUserDisabled(
        auth_pb2.SetUserDisabledRequest(username=name, disabled=True), metadata=admin_metadata
    )
    assert disabled.limits_json == '{"requests_per_minute":12}'

    listed: dict[str, str] = {}
    token = ""
    for _ in range(1000):
        page = await stub.ListUsers(auth_pb2.ListUsersRequest(page_token=token), metadata=admin_metadata)
        listed.update((u.username, u.limits_json) for u in page.users)
        token = page.next_page_token
        if not token:
            break
    assert listed[name] == '{"requests_per_minute":12}'
    assert all(json.loads(value) is not None for value in listed.values())


# --- the admin CLI --------------------------------------------------------------------------------


@pytest.fixture
async def cli_store(new_database_dsn: str) -> AsyncIterator[tuple[CliSettings, UserStore]]:
    await apply_migrations(new_database_dsn)
    pool = await create_pool(new_database_dsn, max_size=2)
    yield (
        CliSettings(GENAI_ENV="dev", database_url=new_database_dsn, **FAST_ARGON2),
        UserStore(pool, Passwords(time_cost=1, memory_cost=64, parallelism=1)),
    )
    await pool.close()


async def test_cli_set_limits(
    cli_store: tuple[CliSettings, UserStore], capsys: pytest.CaptureFixture[str]
) -> None:
    settings, store = cli_store
    parse = cli.build_parser().parse_args
    await store.create("erin", "erin-password-1")
    await store.create("frank", "frank-password-1")

    args = ["set-limits", "Erin", "--requests-per-minute", "30", "--tokens-per-day", "-1"]
    assert await cli.run(parse(args), settings) == 0
    assert capsys.readouterr().out == 'limits of \'erin\': {"requests_per_minute":30,"tokens_per_day":-1}\n'
    assert (await store.get_by_username("erin")).limits == {"requests_per_minute": 30, "tokens_per_day": -1}  # type: ignore[union-attr]

    # The flags given form the whole new set, as with the RPC.
    assert await cli.run(parse(["set-limits", "erin", "--concurrent-requests", "2"]), settings) == 0
    capsys.readouterr()
    assert (await store.get_by_username("erin")).limits == {"concurrent_requests": 2}  # type: ignore[union-attr]

    assert await cli.run(parse(["list"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "STATUS", "SOURCE", "CREATED", "ID", "LIMITS"]
    rows = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert rows == {"erin": '{"concurrent_requests":2}', "frank": "{}"}

    for bad, complaint in [
        (["set-limits", "erin"], "give at least one limit, or --clear"),
        (["set-limits", "erin", "--clear", "--tokens-per-minute", "5"], "give it alone"),
        (["set-limits", "erin", "--tokens-per-minute", "0"], "tokens_per_minute must be 1 to 1000000000"),
        (["set-limits", "erin", "--tokens-per-minute", "-7"], "or -1 for unlimited; got -7"),
        (["set-limits", "erin", "--tokens-per-minute", "1000000001"], "tokens_per_minute must be 1 to"),
        (["set-limits", "nobody", "--tokens-per-minute", "5"], "no user named 'nobody'"),
    ]:
        assert await cli.run(parse(bad), settings) == 1, bad
        assert complaint in capsys.readouterr().err, bad
    assert (await store.get_by_username("erin")).limits == {"concurrent_requests": 2}  # type: ignore[union-attr]

    assert await cli.run(parse(["set-limits", "erin", "--clear"]), settings) == 0
    assert "cleared" in capsys.readouterr().out
    assert (await store.get_by_username("erin")).limits == {}  # type: ignore[union-attr]


def test_cli_set_limits_refuses_non_integers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["set-limits", "erin", "--tokens-per-minute", "1.5"])
    assert "invalid int value" in capsys.readouterr().err


# --- the migration --------------------------------------------------------------------------------


async def test_migration_gives_existing_users_no_overrides(new_database_dsn: str, tmp_path: Path) -> None:
    # The schema as it was before 0003, with a user in it.
    for path in sorted(MIGRATIONS_DIR.glob("000[12]_*.sql")):
        shutil.copy(path, tmp_path / path.name)
    assert await migrate(new_database_dsn, COMPONENT, tmp_path) == ["0001_users.sql", "0002_api_keys.sql"]
    conn = await asyncpg.connect(new_database_dsn)
    try:
        await conn.execute("INSERT INTO users (username, password_hash) VALUES ('old.timer', 'x')")
        assert (await apply_migrations(new_database_dsn))[0] == "0003_user_limits.sql"
        assert await conn.fetchval("SELECT limits::text FROM users WHERE username = 'old.timer'") == "{}"
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE users SET limits = '[]'")
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("UPDATE users SET limits = NULL")
    finally:
        await conn.close()
