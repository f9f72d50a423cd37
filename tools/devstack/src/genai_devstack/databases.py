"""Creating and dropping whole databases on a PostgreSQL server (fresh one per test run), and giving each
service its own role in one (genai_common.roles), as production does."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from genai_common.roles import ServiceRole, provision
from genai_devstack.infra import database_url

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def _admin(server_url: str, statement: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(server_url: str, name: str | None = None, *, exist_ok: bool = False) -> str:
    """Create a database (a random name by default) and return its URL."""
    name = name or f"genai_test_{uuid.uuid4().hex[:12]}"
    if not _NAME.match(name):
        raise ValueError(f"unsafe database name: {name!r}")

    async def create() -> None:
        try:
            await _admin(server_url, f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            if not exist_ok:
                raise

    asyncio.run(create())
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"unsafe database name: {name!r}")
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# Component -> its PostgreSQL role (and schema), as in deploy/docker-compose.yml.
SERVICE_ROLES = {"auth": "genai_auth", "history": "genai_history"}


def kept_secret(path: Path) -> str:
    """A random secret made once into `path` (mode 0600) and read back on every later run."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made by a concurrent run a moment ago
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return path.read_text().strip()


def role_url(admin_url: str, role: str, password: str) -> str:
    """The same server and database as `admin_url`, as `role` with `password`."""
    parts = urlsplit(admin_url)
    address = parts.netloc.rpartition("@")[2]
    userinfo = f"{quote(role, safe='')}:{quote(password, safe='')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{address}", parts.path, parts.query, parts.fragment))


def service_database_urls(admin_url: str, secrets_dir: Path) -> dict[str, str]:
    """Each service's own role and schema in the database `admin_url` names; component -> its URL.

    Passwords are made once into `secrets_dir` like the JWT secret, so that every stack of a work folder
    (or of a test session) agrees with what the server holds for the shared, server-wide roles.
    """
    urls = {
        component: role_url(admin_url, role, kept_secret(secrets_dir / f"postgres-{role}-password"))
        for component, role in SERVICE_ROLES.items()
    }
    services = [ServiceRole.from_url(component, url) for component, url in urls.items()]
    asyncio.run(provision(admin_url, services))
    return urls
