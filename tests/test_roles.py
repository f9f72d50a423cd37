"""genai_common.roles against a real PostgreSQL: each service's role reads and writes its own schema only.

Roles belong to the whole server, so these tests use the session's passwords for genai_auth and
genai_history (databases.service_database_urls with the session's work folder) wherever other stacks of
the session may be connected; rotating a password is tried on a server of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from genai_auth.schema import COMPONENT as AUTH
from genai_auth.schema import MIGRATIONS_DIR as AUTH_MIGRATIONS
from genai_common.db import migrate
from genai_common.roles import ProvisioningError, ServiceRole, provision, scram_sha256_verifier
from genai_devstack import databases, infra
from genai_history.store import COMPONENT as HISTORY
from genai_history.store import MIGRATIONS_DIR as HISTORY_MIGRATIONS
from tests.harness import RunningStack

AUTH_TABLES = [
    "api_keys",
    "revocation_backlog",
    "revoked_tokens",
    "telegram_link_codes",
    "telegram_links",
    "users",
]
HISTORY_TABLES = ["audit_events", "conversations", "deleted_conversations", "messages"]
# History's tables from the releases before the per-service schemas (`roles.LEGACY_OBJECTS`); later
# migrations (0006 on) have only ever run as the service's role.
LEGACY_HISTORY_MIGRATIONS = 5
ARGON2_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"


@pytest.fixture
def urls(new_database_dsn: str, work_dir: Path) -> dict[str, str]:
    """A new database with both services' roles and schemas: component -> the URL of its role."""
    return databases.service_database_urls(new_database_dsn, work_dir)


def roles_of(urls: dict[str, str]) -> list[ServiceRole]:
    return [ServiceRole.from_url(component, url) for component, url in urls.items()]


async def migrated(urls: dict[str, str]) -> None:
    """Both services' migrations, each as its own role, as the compose jobs run them."""
    await migrate(urls[AUTH], AUTH, AUTH_MIGRATIONS)
    await migrate(urls[HISTORY], HISTORY, HISTORY_MIGRATIONS)


async def refused(dsn: str, statement: str) -> type[Exception]:
    """The error class `statement` fails with when run by the user of `dsn` (it must fail)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        return type(exc)
    finally:
        await conn.close()
    raise AssertionError(f"{statement!r} was allowed")


async def tables(dsn: str) -> dict[str, list[tuple[str, str]]]:
    """Schema -> (table, owner) of every table outside PostgreSQL's own schemas."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT schemaname, tablename, tableowner FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    found: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        found.setdefault(row["schemaname"], []).append((row["tablename"], row["tableowner"]))
    return found


# --- what a service's role can do ---------------------------------------------------------------------------


def test_history_cannot_read_the_users_password_hashes_nor_auth_history(urls: dict[str, str]) -> None:
    async def check() -> None:
        await migrated(urls)
        for statement in (
            "SELECT * FROM genai_auth.users",
            "SELECT password_hash FROM genai_auth.users",
            "SELECT * FROM genai_auth.api_keys",
            "INSERT INTO genai_auth.users (username, password_hash) VALUES ('mallory', 'x')",
        ):
            assert await refused(urls[HISTORY], statement) is asyncpg.InsufficientPrivilegeError, statement
        # Unqualified, the name does not even resolve: history's search path is its own schema.
        assert await refused(urls[HISTORY], "SELECT * FROM users") is asyncpg.UndefinedTableError
        for statement in ("SELECT * FROM genai_history.messages", "DELETE FROM genai_history.audit_events"):
            assert await refused(urls[AUTH], statement) is asyncpg.InsufficientPrivilegeError, statement
        assert await refused(urls[AUTH], "SELECT * FROM messages") is asyncpg.UndefinedTableError
        # Each reads and writes its own.
        for component, table in ((AUTH, "users"), (HISTORY, "conversations")):
            conn = await asyncpg.connect(urls[component])
            try:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0  # noqa: S608 (a constant)
            finally:
                await conn.close()

    asyncio.run(check())


def test_service_roles_hold_no_administrative_right(urls: dict[str, str], new_database_dsn: str) -> None:
    async def check() -> None:
        conn = await asyncpg.connect(new_database_dsn)
        try:
            rows = await conn.fetch(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
                "FROM pg_roles WHERE rolname = ANY($1::text[]) ORDER BY 1",
                ["genai_auth", "genai_history"],
            )
            memberships = await conn.fetchval(
                "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                "WHERE r.rolname = ANY($1::text[])",
                ["genai_auth", "genai_history"],
            )
        finally:
            await conn.close()
        assert [tuple(row.values()) for row in rows] == [
            ("genai_auth", False, False, False, False, False, True),
            ("genai_history", False, False, False, False, False, True),
        ]
        assert memberships == 0
        for url in urls.values():
            for statement in (
                "CREATE ROLE intruder",
                "CREATE DATABASE intruder",
                "CREATE TABLE public.intruder (id int)",
                "CREATE TEMPORARY TABLE intruder (id int)",
                "CREATE SCHEMA intruder",
                "SET ROLE postgres",
                "ALTER ROLE CURRENT_USER SUPERUSER",
            ):
                assert await refused(url, statement) is asyncpg.InsufficientPrivilegeError, statement
        assert await refused(urls[HISTORY], "SET ROLE genai_auth") is asyncpg.InsufficientPrivilegeError

    asyncio.run(check())


def test_migrations_create_each_service_tables_in_its_own_schema(
    urls: dict[str, str], new_database_dsn: str
) -> None:
    asyncio.run(migrated(urls))
    found = asyncio.run(tables(new_database_dsn))
    assert found == {
        "genai_auth": [(t, "genai_auth") for t in sorted([*AUTH_TABLES, "schema_migrations"])],
        "genai_history": [(t, "genai_history") for t in sorted([*HISTORY_TABLES, "schema_migrations"])],
    }
    # Applied once: again, as the role, nothing is left to apply.
    assert asyncio.run(migrate(urls[HISTORY], HISTORY, HISTORY_MIGRATIONS)) == []


# --- provisioning an existing database ----------------------------------------------------------------------


def test_tables_of_an_earlier_release_move_out_of_public_to_their_role(
    new_database_dsn: str, work_dir: Path
) -> None:
    admin = new_database_dsn
    legacy_history = work_dir / f"history-migrations-{uuid.uuid4().hex[:8]}"
    legacy_history.mkdir()
    for script in sorted(HISTORY_MIGRATIONS.glob("*.sql"))[:LEGACY_HISTORY_MIGRATIONS]:
        (legacy_history / script.name).write_bytes(script.read_bytes())

    async def earlier_release() -> uuid.UUID:
        # The layout before roles: everything in `public`, made by the administrator, with rows in it.
        await migrate(admin, AUTH, AUTH_MIGRATIONS)
        await migrate(admin, HISTORY, legacy_history)
        conn = await asyncpg.connect(admin)
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (username, password_hash) VALUES ('alice', $1) RETURNING id", ARGON2_HASH
            )
            await conn.execute(
                "INSERT INTO conversations (owner_id, origin, title) VALUES ($1, 'chat', 'winter')", user_id
            )
        finally:
            await conn.close()
        return user_id

    user_id = asyncio.run(earlier_release())
    urls = databases.service_database_urls(admin, work_dir)

    async def check() -> None:
        found = await tables(admin)
        legacy = [t for t in HISTORY_TABLES if t != "deleted_conversations"]
        assert found == {
            "genai_auth": [(t, "genai_auth") for t in sorted([*AUTH_TABLES, "schema_migrations"])],
            "genai_history": [(t, "genai_history") for t in sorted([*legacy, "schema_migrations"])],
        }, "public keeps nothing, not even the shared schema_migrations"
        # Nothing is applied again: each schema's bookkeeping came along with its tables. What the earlier
        # release lacked is applied by the role, in its schema.
        assert await migrate(urls[AUTH], AUTH, AUTH_MIGRATIONS) == []
        assert await migrate(urls[HISTORY], HISTORY, HISTORY_MIGRATIONS) == ["0006_deleted_conversations.sql"]
        assert (await tables(admin))["genai_history"] == [
            (t, "genai_history") for t in sorted([*HISTORY_TABLES, "schema_migrations"])
        ]

        history = await asyncpg.connect(urls[HISTORY])
        auth = await asyncpg.connect(urls[AUTH])
        try:
            assert await history.fetchval("SELECT title FROM conversations") == "winter"
            assert await history.fetchval("SELECT count(*) FROM genai_history.schema_migrations") == 6
            assert (
                await refused(urls[HISTORY], "SELECT * FROM genai_auth.users")
                is asyncpg.InsufficientPrivilegeError
            )
            # Auth's rows, its trigger function (moved and handed over with the table) and its change feed.
            heard: asyncio.Queue[str] = asyncio.Queue()
            await auth.add_listener("genai_auth_changes", lambda *args: heard.put_nowait(args[3]))
            await auth.execute("UPDATE users SET disabled = true WHERE username = 'alice'")
            assert await asyncio.wait_for(heard.get(), 10) == f"user:{user_id}"
            functions = await auth.fetch(
                "SELECT p.proname, r.rolname FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
                "WHERE p.pronamespace = 'genai_auth'::regnamespace ORDER BY 1"
            )
            assert [tuple(f.values()) for f in functions] == [
                ("genai_auth_announce", "genai_auth"),
                ("genai_auth_announce_all", "genai_auth"),
            ]
        finally:
            await history.close()
            await auth.close()

        # Again: nothing left to move or hand over.
        again = await provision(admin, roles_of(urls))
        assert [(r.moved, r.handed_over) for r in again] == [([], 0), ([], 0)]

    asyncio.run(check())


def test_objects_someone_else_made_in_a_service_schema_are_handed_to_its_role(
    urls: dict[str, str], new_database_dsn: str
) -> None:
    # What a restore with --no-owner leaves: the service's objects owned by whoever restored them.
    async def check() -> None:
        await migrated(urls)
        conn = await asyncpg.connect(new_database_dsn)
        try:
            await conn.execute(
                "CREATE TABLE genai_history.restored (id bigint GENERATED ALWAYS AS IDENTITY, body text);"
                "CREATE SEQUENCE genai_history.loose;"
                "CREATE FUNCTION genai_history.helper() RETURNS int LANGUAGE sql AS 'SELECT 1';"
                "CREATE TEXT SEARCH CONFIGURATION genai_history.mixed (COPY = pg_catalog.russian);"
                "ALTER TABLE genai_history.messages OWNER TO postgres"
            )
        finally:
            await conn.close()
        assert await refused(urls[HISTORY], "INSERT INTO restored (body) VALUES ('x')")
        (result,) = await provision(new_database_dsn, roles_of({HISTORY: urls[HISTORY]}))
        assert (
            result.handed_over == 5
        )  # the table with its identity, a sequence, a function, a config, messages
        history = await asyncpg.connect(urls[HISTORY])
        try:
            await history.execute("INSERT INTO restored (body) VALUES ('x')")
            assert await history.fetchval("SELECT nextval('loose') + helper()") == 2
            # A text search configuration of the service's own is found by its unqualified name.
            assert await history.fetchval(
                "SELECT to_tsvector('mixed', 'зимы') = to_tsvector('russian', 'зимы')"
            )
            await history.execute(
                "ALTER TABLE messages ADD COLUMN scratch int; ALTER TABLE messages DROP COLUMN scratch"
            )
        finally:
            await history.close()

    asyncio.run(check())


def test_unsafe_requests_are_refused_before_anything_changes(new_database_dsn: str) -> None:
    def attempt(*services: ServiceRole) -> str:
        with pytest.raises(ProvisioningError) as caught:
            asyncio.run(provision(new_database_dsn, services))
        return str(caught.value)

    good = "0123456789abcdef" * 4
    # The administrator's own role would lose its rights (ALTER ROLE ... NOSUPERUSER).
    assert "administrator" in attempt(ServiceRole("auth", "postgres", good))
    assert "own" in attempt(
        ServiceRole("auth", "genai_auth", good), ServiceRole("history", "genai_auth", good)
    )
    assert "unsafe" in attempt(ServiceRole("auth", 'x"; DROP ROLE postgres; --', good))
    assert "unsafe" in attempt(ServiceRole("auth", "pg_read_all_data", good))
    with pytest.raises(ProvisioningError, match="printable ASCII"):
        scram_sha256_verifier("пароль с пробелом")
    with pytest.raises(ProvisioningError, match="user and a password"):
        ServiceRole.from_url("auth", "postgresql://127.0.0.1/genai")


# --- the command line (the compose job) --------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "genai_common.roles", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_command_line_provisions_and_never_prints_a_password(
    new_database_dsn: str, urls: dict[str, str]
) -> None:
    env = {"ADMIN": new_database_dsn, "AUTH_URL": urls[AUTH], "HISTORY_URL": urls[HISTORY]}
    args = ("--admin-url-env", "ADMIN", "--service", "auth=AUTH_URL", "--service", "history=HISTORY_URL")
    done = run_cli(env, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "role genai_auth: updated" in done.stdout and "role genai_history: updated" in done.stdout
    passwords = [ServiceRole.from_url(c, u).password for c, u in urls.items()]
    for password in passwords:
        assert password not in done.stdout + done.stderr

    # Outside dev mode a short password is refused, and the message does not echo it.
    weak = databases.role_url(new_database_dsn, "genai_auth", "short-password")
    refused_run = run_cli({**env, "AUTH_URL": weak}, *args)
    assert refused_run.returncode == 1 and "at least 32 characters" in refused_run.stdout + refused_run.stderr
    assert "short-password" not in refused_run.stdout + refused_run.stderr
    # A service URL of another database than the one provisioned.
    elsewhere = urls[AUTH].rsplit("/", 1)[0] + "/elsewhere"
    mismatch = run_cli({**env, "AUTH_URL": elsewhere}, *args)
    assert mismatch.returncode == 1 and "must name the database" in mismatch.stdout + mismatch.stderr
    assert run_cli({"AUTH_URL": urls[AUTH]}, *args).returncode == 1


# --- passwords on a server that checks them -------------------------------------------------------------------


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A PostgreSQL of this module's own that checks passwords over TCP (SCRAM-SHA-256); its admin URL."""
    # Not under pytest's tmp_path: as root, the server runs as `postgres`, which must reach its folder.
    with (
        tempfile.TemporaryDirectory(prefix="genai-scram-") as folder,
        infra.started(infra.start_local_postgres(Path(folder) / "pgdata", infra.free_port())) as server,
    ):
        work = Path(folder)
        admin_password = "0123456789abcdef" * 4

        async def set_admin_password() -> None:
            conn = await asyncpg.connect(server.url)
            try:
                await conn.execute(f"ALTER ROLE postgres PASSWORD '{admin_password}'")
                (work / "pgdata" / "pg_hba.conf").write_text(
                    "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
                )
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        asyncio.run(set_admin_password())
        yield f"postgresql://postgres:{admin_password}@127.0.0.1:{server.port}/postgres"


def test_role_passwords_are_real_and_rotate(password_server: str) -> None:
    admin = password_server
    first, second = "a1" * 32, "b2" * 32

    async def connects(password: str) -> bool:
        try:
            conn = await asyncpg.connect(databases.role_url(admin, "genai_auth", password))
        except asyncpg.InvalidPasswordError:
            return False
        await conn.close()
        return True

    async def check() -> None:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(databases.role_url(admin, "postgres", "wrong"))
        await provision(admin, [ServiceRole("auth", "genai_auth", first)])
        assert await connects(first) and not await connects(second)
        # Rotating: provision again with the new password (the service then restarts with the new URL).
        await provision(admin, [ServiceRole("auth", "genai_auth", second)])
        assert await connects(second) and not await connects(first)
        conn = await asyncpg.connect(admin)
        try:
            stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = 'genai_auth'")
        finally:
            await conn.close()
        assert stored.startswith("SCRAM-SHA-256$4096:") and second not in stored

    asyncio.run(check())


# --- the running stack -------------------------------------------------------------------------------------


def test_the_stack_services_connect_as_their_own_roles(sim_stack: RunningStack) -> None:
    env = sim_stack.env
    user = sim_stack.new_user()  # auth writes the user; history is read through the gateway below
    with sim_stack.client() as client:
        listed = client.get("/api/v1/history", headers=user.headers)
    assert listed.status_code == 200, listed.text
    auth_url, history_url = env["GENAI_AUTH_DATABASE_URL"], env["GENAI_HISTORY_DATABASE_URL"]
    assert ServiceRole.from_url(AUTH, auth_url).role == "genai_auth"
    assert ServiceRole.from_url(HISTORY, history_url).role == "genai_history"

    async def check() -> None:
        assert await refused(history_url, "SELECT password_hash FROM genai_auth.users") is (
            asyncpg.InsufficientPrivilegeError
        )
        assert await refused(auth_url, "SELECT prompt FROM genai_history.messages") is (
            asyncpg.InsufficientPrivilegeError
        )
        conn = await asyncpg.connect(sim_stack.cfg.database_url)
        try:
            owner = await conn.fetchval(
                "SELECT tableowner FROM pg_tables WHERE schemaname = 'genai_auth' AND tablename = 'users'"
            )
            assert await conn.fetchval(
                "SELECT count(*) FROM genai_auth.users WHERE username = $1", user.username
            )
        finally:
            await conn.close()
        assert owner == "genai_auth"

    asyncio.run(check())
