"""deploy/backup/backup.sh and restore.sh against a real PostgreSQL: what goes in comes back out."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from genai_common.db import migrate
from genai_devstack import databases, infra
from genai_devstack.nginx import repo_root

BACKUP = repo_root() / "deploy" / "backup" / "backup.sh"
RESTORE = repo_root() / "deploy" / "backup" / "restore.sh"

# The services' own schemas (each owned by its role, as genai_common.roles makes them) plus a table of the
# administrator's with awkward values: every type the services store, and a sequence whose position must
# survive.
SEED = """
CREATE TABLE backup_probe (
    id bigserial PRIMARY KEY,
    body text NOT NULL,
    raw bytea,
    meta jsonb,
    at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO backup_probe (body, raw, meta) VALUES
    ('Как исправить ошибку Permission denied?', '\\x00ff10', '{"tokens": 12, "cached": false}'),
    (repeat('long answer ', 5000), NULL, NULL),
    ('quote '' and backslash \\ and tab \t', '\\x', '[]');
INSERT INTO genai_auth.users (username, password_hash, role) VALUES
    ('alice', '$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA', 'admin'),
    ('bob', '$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA', 'user');
"""


def pg_tools_env() -> dict[str, str]:
    """The environment the scripts run in: PostgreSQL's client tools on PATH (Debian keeps them aside)."""
    found = shutil.which("pg_dump") or infra.find_binary("pg_dump")
    if not found or not (shutil.which("psql") or infra.find_binary("psql")):
        pytest.fail("pg_dump/pg_restore/psql are not installed (package postgresql-client; `make setup`)")
    bin_dirs = {str(Path(found).parent), str(Path(infra.find_binary("psql") or found).parent)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PATH"] = os.pathsep.join([*bin_dirs, env.get("PATH", "")])
    return env


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def snapshot(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of every schema but PostgreSQL's own ("schema.table"), in a stable order,
    plus where each sequence stands."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            (row["schemaname"], row["tablename"])
            for row in await conn.fetch(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            )
        ]
        result = {}
        for schema, table in tables:
            rows = await conn.fetch(f'SELECT * FROM "{schema}"."{table}"')  # noqa: S608 (names from pg_tables)
            result[f"{schema}.{table}"] = sorted((tuple(row.values()) for row in rows), key=repr)
        sequences = await conn.fetch(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2"
        )
        result["<sequences>"] = [tuple(row.values()) for row in sequences]
        return result
    finally:
        await conn.close()


def seed(dsn: str, work_dir: Path) -> dict[str, str]:
    """The production layout: each service's role and schema, migrated as that role; then the SEED rows."""
    urls = databases.service_database_urls(dsn, work_dir)
    asyncio.run(_seed(dsn, urls))
    return urls


async def _seed(dsn: str, urls: dict[str, str]) -> None:
    root = repo_root()
    await migrate(urls["auth"], "auth", root / "services" / "auth" / "src" / "genai_auth" / "migrations")
    await migrate(
        urls["history"], "history", root / "services" / "history" / "src" / "genai_history" / "migrations"
    )
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SEED)
    finally:
        await conn.close()


async def execute(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def empty_database(postgres_server: infra.Service) -> Iterator[str]:
    """A second brand-new database in the same test (the restore target)."""
    url = databases.create_database(postgres_server.url)
    try:
        yield url
    finally:
        databases.drop_database(postgres_server.url, url.rsplit("/", 1)[1].split("?")[0])


async def role_counts(urls: dict[str, str]) -> tuple[int, int]:
    """Users as auth's role sees them, conversations as history's: what the services can read."""
    auth, history = await asyncpg.connect(urls["auth"]), await asyncpg.connect(urls["history"])
    try:
        return int(await auth.fetchval("SELECT count(*) FROM users")), int(
            await history.fetchval("SELECT count(*) FROM conversations")
        )
    finally:
        await auth.close()
        await history.close()


# A statement of a --no-owner restore that names a service's role: it would fail on a server without it.
_ROLE_IN_ACL = re.compile(
    r"^(GRANT|REVOKE|ALTER DEFAULT PRIVILEGES)\b.*\b(TO|FROM) genai_(auth|history)\b", re.M
)


def test_backup_then_restore_into_an_empty_database(
    new_database_dsn: str, empty_database: str, tmp_path: Path, work_dir: Path
) -> None:
    env = pg_tools_env()
    seed(new_database_dsn, work_dir)
    before = asyncio.run(snapshot(new_database_dsn))
    assert len(before["public.backup_probe"]) == 3 and len(before["genai_auth.users"]) == 2
    assert before["genai_auth.schema_migrations"] and before["genai_history.schema_migrations"]

    # An old dump past retention, one within it, and a file that is not a dump of ours.
    backups = tmp_path / "backups"
    backups.mkdir()
    expired = backups / "genai-20000101T000000Z.dump"
    recent = backups / "genai-20000102T000000Z.dump"
    foreign = backups / "notes.dump"
    for path in (expired, recent, foreign):
        path.write_bytes(b"x")
    now = time.time()
    os.utime(expired, (now - 10 * 86400, now - 10 * 86400))
    os.utime(foreign, (now - 10 * 86400, now - 10 * 86400))
    os.utime(recent, (now - 2 * 86400, now - 2 * 86400))

    made = run(
        BACKUP,
        env={
            **env,
            "BACKUP_DIR": str(backups),
            "BACKUP_DATABASE_URL": new_database_dsn,
            "BACKUP_KEEP_DAYS": "7",
        },
    )
    assert made.returncode == 0, made.stderr
    dumps = sorted(backups.glob("genai-2*.dump"))
    new = [path for path in dumps if path not in (recent,)]
    assert len(new) == 1 and new[0].stat().st_size > 1000, dumps
    assert new[0].stat().st_mode & 0o077 == 0, "dumps are readable by their owner only"
    assert not expired.exists(), "a dump older than BACKUP_KEEP_DAYS is deleted"
    assert recent.exists() and foreign.exists(), "retention touches only our dumps past the limit"
    assert not list(backups.glob(".*partial")), "no half-written file left"

    # The source changes after the dump: the restore must bring back the state at dump time.
    asyncio.run(execute(new_database_dsn, "DELETE FROM backup_probe; DELETE FROM genai_auth.users"))

    restored = run(RESTORE, str(new[0]), empty_database, env=env)
    assert restored.returncode == 0, restored.stderr
    after = asyncio.run(snapshot(empty_database))
    assert after == before
    # The restored objects belong to whoever restored them (--no-owner): the roles job hands each service's
    # schema back to its role, as `docker compose up -d` runs it after a restore.
    urls = databases.service_database_urls(empty_database, work_dir)
    assert asyncio.run(role_counts(urls)) == (2, 0)
    # Nothing in the dump needs the services' roles to exist: it restores into a server that has none yet.
    script = subprocess.run(
        ["pg_restore", "--no-owner", "--file=-", str(new[0])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CREATE SCHEMA genai_auth;" in script and not _ROLE_IN_ACL.search(script)

    # The sequence continues where it stood: new rows do not collide with restored ones.
    async def next_id() -> int:
        conn = await asyncpg.connect(empty_database)
        try:
            return int(await conn.fetchval("INSERT INTO backup_probe (body) VALUES ('new') RETURNING id"))
        finally:
            await conn.close()

    assert asyncio.run(next_id()) == 4


def test_restore_refuses_a_database_with_tables_unless_clean(
    new_database_dsn: str, tmp_path: Path, work_dir: Path
) -> None:
    env = pg_tools_env()
    urls = seed(new_database_dsn, work_dir)
    before = asyncio.run(snapshot(new_database_dsn))
    made = run(BACKUP, env={**env, "BACKUP_DIR": str(tmp_path), "BACKUP_DATABASE_URL": new_database_dsn})
    assert made.returncode == 0, made.stderr
    (dump,) = tmp_path.glob("genai-*.dump")

    # Later writes to the live database.
    asyncio.run(
        execute(
            new_database_dsn,
            "DELETE FROM genai_auth.users WHERE username = 'bob'; "
            "UPDATE backup_probe SET body = 'changed' WHERE id = 1",
        )
    )

    refused = run(RESTORE, str(dump), new_database_dsn, env=env)
    assert refused.returncode == 1
    assert "not empty" in refused.stderr
    assert asyncio.run(snapshot(new_database_dsn)) != before, "a refused restore changes nothing"

    assert run(RESTORE, "--if-exists", str(dump), new_database_dsn, env=env).returncode == 2

    replaced = run(RESTORE, "--clean", "--if-exists", str(dump), new_database_dsn, env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert asyncio.run(snapshot(new_database_dsn)) == before
    # The schemas were made again by the restoring administrator; the roles job hands them back.
    assert databases.service_database_urls(new_database_dsn, work_dir) == urls
    assert asyncio.run(role_counts(urls)) == (2, 0)


def test_failed_backup_leaves_no_file_and_says_so(tmp_path: Path) -> None:
    env = pg_tools_env()
    closed = f"postgresql://postgres@127.0.0.1:{infra.free_port()}/nothing"
    failed = run(BACKUP, env={**env, "BACKUP_DIR": str(tmp_path), "BACKUP_DATABASE_URL": closed})
    assert failed.returncode == 1
    assert "pg_dump failed" in failed.stdout + failed.stderr
    assert list(tmp_path.iterdir()) == []


def test_restore_rejects_a_file_that_is_not_a_dump(new_database_dsn: str, tmp_path: Path) -> None:
    bogus = tmp_path / "genai-20000101T000000Z.dump"
    bogus.write_text("not a dump")
    result = run(RESTORE, str(bogus), new_database_dsn, env=pg_tools_env())
    assert result.returncode == 1 and "not a pg_dump custom-format archive" in result.stderr
