from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from genai_auth import cli
from genai_auth.passwords import Passwords
from genai_auth.schema import apply_migrations
from genai_auth.settings import CliSettings
from genai_auth.users import UserStore
from genai_common.db import create_pool

FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_cost": 64, "argon2_parallelism": 1}
PASSWORD_LINE = re.compile(r"^password: (\S+)$", re.MULTILINE)
SCRIPT = Path(sys.executable).with_name("genai-auth-admin")


def _cli_settings(dsn: str, **extra: str) -> CliSettings:
    return CliSettings(GENAI_ENV="dev", database_url=dsn, **FAST_ARGON2, **extra)


@pytest.fixture
async def fresh_store(new_database_dsn: str) -> AsyncIterator[UserStore]:
    """A store over a database of this test's own, which `init` will set up."""
    pool = await create_pool(new_database_dsn, max_size=2)
    yield UserStore(pool, Passwords(time_cost=1, memory_cost=64, parallelism=1))
    await pool.close()


async def test_init_creates_one_admin_and_is_idempotent(
    new_database_dsn: str, fresh_store: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _cli_settings(new_database_dsn)
    assert await cli.run(cli.build_parser().parse_args(["init"]), settings) == 0
    first = capsys.readouterr().out
    assert "applied migration 0001_users.sql" in first
    assert "created admin user 'admin'" in first
    assert "change it" in first
    match = PASSWORD_LINE.search(first)
    assert match, first
    password = match.group(1)
    assert len(password) >= 24

    admin = await fresh_store.authenticate("admin", password)
    assert admin is not None and admin.role == "admin"

    assert await cli.run(cli.build_parser().parse_args(["init"]), settings) == 0
    second = capsys.readouterr().out
    assert "password" not in second
    assert password not in second
    assert "exists already" in second
    assert [u.username for u in await fresh_store.list_page(None, 10)] == ["admin"]


async def test_init_with_given_admin_credentials(
    new_database_dsn: str, fresh_store: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _cli_settings(
        new_database_dsn, GENAI_ADMIN_USER="ops.lead", GENAI_ADMIN_PASSWORD="given-admin-password"
    )
    assert await cli.run(cli.build_parser().parse_args(["init"]), settings) == 0
    out = capsys.readouterr().out
    assert "created admin user 'ops.lead'" in out
    assert "given-admin-password" not in out
    assert await fresh_store.authenticate("ops.lead", "given-admin-password") is not None


async def test_init_refuses_bad_given_password(
    new_database_dsn: str, fresh_store: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _cli_settings(new_database_dsn, GENAI_ADMIN_PASSWORD="short")
    assert await cli.run(cli.build_parser().parse_args(["init"]), settings) == 1
    assert "password must be 8 to 1024 characters" in capsys.readouterr().err
    assert not await fresh_store.has_admin()


async def test_user_commands(
    new_database_dsn: str, fresh_store: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    await apply_migrations(new_database_dsn)
    settings = _cli_settings(new_database_dsn)
    parse = cli.build_parser().parse_args

    assert await cli.run(parse(["create-user", "Carol", "--role", "admin"]), settings) == 0
    out = capsys.readouterr().out
    match = PASSWORD_LINE.search(out)
    assert match and "created user 'Carol' with role admin" in out
    assert await fresh_store.authenticate("carol", match.group(1)) is not None

    assert await cli.run(parse(["create-user", "dave", "--password-stdin"]), settings, "dave-password-1") == 0
    assert "password" not in capsys.readouterr().out.replace("password-stdin", "")
    assert await fresh_store.authenticate("dave", "dave-password-1") is not None

    assert await cli.run(parse(["create-user", "DAVE"]), settings) == 1
    assert "already exists" in capsys.readouterr().err
    assert await cli.run(parse(["create-user", "x"]), settings) == 1
    assert "username must be" in capsys.readouterr().err

    assert (
        await cli.run(parse(["reset-password", "dave", "--password-stdin"]), settings, "dave-password-2") == 0
    )
    capsys.readouterr()
    assert await fresh_store.authenticate("dave", "dave-password-1") is None
    reset = await fresh_store.authenticate("dave", "dave-password-2")
    # The shared reset logic ends the sessions: tokens issued before now are refused.
    assert reset is not None and reset.sessions_valid_after is not None
    assert reset.session_predates_reset(int(reset.sessions_valid_after.timestamp()) - 1)
    assert await cli.run(parse(["reset-password", "dave"]), settings) == 0
    generated = re.search(r"password: (\S+)", capsys.readouterr().out)
    assert generated is not None and await fresh_store.authenticate("dave", generated.group(1)) is not None
    assert await cli.run(parse(["reset-password", "nobody"]), settings) == 1
    assert "no user named 'nobody'" in capsys.readouterr().err

    assert await cli.run(parse(["disable", "dave"]), settings) == 0
    user = await fresh_store.get_by_username("dave")
    assert user is not None and user.disabled
    assert await cli.run(parse(["enable", "dave"]), settings) == 0
    user = await fresh_store.get_by_username("dave")
    assert user is not None and not user.disabled
    assert await cli.run(parse(["disable", "nobody"]), settings) == 1
    capsys.readouterr()

    assert await cli.run(parse(["list"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["USERNAME", "ROLE", "STATUS", "SOURCE", "CREATED", "ID", "LIMITS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["Carol", "admin", "active"],
        ["dave", "user", "active"],
    ]


async def test_commands_before_init_explain_what_to_do(
    new_database_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run(cli.build_parser().parse_args(["list"]), _cli_settings(new_database_dsn)) == 1
    assert "run `genai-auth-admin init` first" in capsys.readouterr().err


def _script_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    env.update(
        GENAI_AUTH_DATABASE_URL=dsn,
        GENAI_ENV="dev",
        GENAI_AUTH_ARGON2_TIME_COST="1",
        GENAI_AUTH_ARGON2_MEMORY_COST="64",
        GENAI_AUTH_ARGON2_PARALLELISM="1",
    )
    return env


async def _script(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Runs the installed console script, as an operator or a one-shot deploy job would."""
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        *args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def test_console_script_init_twice_without_jwt_secret_or_redis(new_database_dsn: str) -> None:
    env = _script_env(new_database_dsn)
    env["GENAI_AUTH_REDIS_URL"] = "redis://127.0.0.1:1/0"  # would fail if the CLI touched Redis
    first = await _script("init", env=env)
    assert first.returncode == 0, first.stderr
    assert len(PASSWORD_LINE.findall(first.stdout)) == 1
    second = await _script("init", env=env)
    assert second.returncode == 0, second.stderr
    assert "password" not in second.stdout + second.stderr

    name = f"script-{uuid.uuid4().hex[:6]}"
    created = await _script(
        "create-user", name, "--password-stdin", env=env, stdin="typed password with spaces\n"
    )
    assert created.returncode == 0, created.stderr
    listed = await _script("list", env=env)
    assert name in listed.stdout

    conn = await asyncpg.connect(new_database_dsn)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE username = $1", name)
    finally:
        await conn.close()
    assert stored.startswith("$argon2id$")
    assert await Passwords(time_cost=1, memory_cost=64, parallelism=1).verify(
        stored, "typed password with spaces"
    )


def test_console_script_reports_missing_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAI_")}
    result = subprocess.run(
        [SCRIPT, "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "GENAI_AUTH_DATABASE_URL" in result.stderr


async def test_list_shows_a_directory_user_with_the_groups_that_gave_the_role(
    new_database_dsn: str, fresh_store: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _cli_settings(new_database_dsn)
    parse = cli.build_parser().parse_args
    assert await cli.run(parse(["init"]), settings) == 0
    group = "cn=genai-heavy,ou=groups,dc=corp,dc=example"
    saved = await fresh_store.save_directory_user(
        "erin", "uid=erin,ou=people,dc=corp,dc=example", "user", {"requests_per_minute": 300}, (group,)
    )
    assert saved is not None and saved.from_directory and saved.password_hash is None
    capsys.readouterr()
    assert await cli.run(parse(["list"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    erin = next(i for i, line in enumerate(lines) if line.startswith("erin "))
    assert lines[erin].split()[:4] == ["erin", "user", "active", "ldap"]
    assert lines[erin].split()[-1] == '{"requests_per_minute":300}'
    assert lines[erin + 1].strip() == f"directory groups: {group}"
    # The directory keeps the password: no reset here, and no local password ever matches.
    assert await cli.run(parse(["reset-password", "erin"]), settings) == 1
    assert "change the password there" in capsys.readouterr().err
    assert await fresh_store.authenticate("erin", "") is None
