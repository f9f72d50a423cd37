"""PostgreSQL roles of the services: one login role per service, owning one schema of the same name.

    python -m genai_common.roles --admin-url-env GENAI_POSTGRES_ADMIN_URL \\
        --service auth=GENAI_AUTH_DATABASE_URL --service history=GENAI_HISTORY_DATABASE_URL

Run with an administrator's URL (the superuser of the postgres container) before the migrations; each
--service names a component and the variable holding the URL that component connects with. The role is
that URL's user, its password that URL's password, so the service and its role can never disagree.

What it makes, idempotently (running it again changes nothing but a rotated password):

- the role: LOGIN, NOSUPERUSER, NOCREATEDB, NOCREATEROLE, NOREPLICATION, NOBYPASSRLS, search_path
  "$user"; its password is sent as a SCRAM-SHA-256 verifier made here (what psql's \\password does), so
  the clear text reaches neither the server's logs nor ours;
- a schema named after the role, owned by it: the migrations, connecting as the role, create their
  unqualified tables there (search_path "$user"), and the service reads them there, with no change to
  the SQL. The role owns everything in it; nobody else has any privilege on it;
- the database: CONNECT for the roles only (no CONNECT or TEMPORARY for PUBLIC), and no privilege on the
  `public` schema for PUBLIC, so a role sees its own schema and PostgreSQL's catalogs, nothing else.

Existing databases, from releases that kept every table in `public` as the superuser's: a component's
tables and functions there (LEGACY_OBJECTS), with its rows of the shared `schema_migrations` table, move
into its schema, and every object in a service's schema is handed to its role (also what a restore with
`--no-owner` needs, whose objects belong to whoever restored them). One transaction, under the
migrations' advisory lock: a failure leaves the database as it was.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import asyncpg
from pydantic import SecretStr

from genai_common.db import MIGRATION_LOCK_ID
from genai_common.logs import setup_logging
from genai_common.settings import check_secret

logger = logging.getLogger(__name__)

# Role and schema names: plain lower-case identifiers, never quoted differently from how they are written.
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# SCRAM-SHA-256 as PostgreSQL stores it (src/common/scram-common.c): 16 bytes of salt, 4096 iterations.
SCRAM_ITERATIONS = 4096
# Attempts of the role step: two provisioners altering one role at once can meet "tuple concurrently
# updated" (roles are shared by every database of the server, and so by every test database).
_ROLE_ATTEMPTS = 5

# What releases before the per-service schemas created in `public`, by component. Frozen: since then
# every migration runs as the service's role and creates in its schema, never in `public`, so this list
# never grows. Objects a database does not have (an older release) are skipped. Indexes, constraints,
# triggers, identity sequences and row types move with their tables.
LEGACY_OBJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "auth": (
        (
            "users",
            "api_keys",
            "revoked_tokens",
            "revocation_backlog",
            "telegram_link_codes",
            "telegram_links",
        ),
        ("genai_auth_announce()", "genai_auth_announce_all()"),
    ),
    "history": (("conversations", "messages", "audit_events"), ("audit_events_append_only()",)),
}

# The same bookkeeping table as genai_common.db.apply_migrations, made in a schema of the caller's choice.
_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class ProvisioningError(Exception):
    """A request that would be unsafe or cannot work; the message names no secret."""


@dataclass(frozen=True)
class ServiceRole:
    """One service's role: its component (for the legacy move), role name (= schema name) and password."""

    component: str
    role: str
    password: str = field(repr=False)

    @property
    def schema(self) -> str:
        return self.role

    @classmethod
    def from_url(cls, component: str, url: str) -> ServiceRole:
        """The role and password a service's postgresql:// URL connects with."""
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ProvisioningError(f"{component}: the URL must be a postgresql:// URL")
        if not parts.username or parts.password is None:
            raise ProvisioningError(f"{component}: the URL must name a user and a password")
        return cls(component, unquote(parts.username), unquote(parts.password))


@dataclass
class Provisioned:
    """What one run did for one service (counts only: nothing here is secret)."""

    role: str
    created: bool = False
    moved: list[str] = field(default_factory=list)
    handed_over: int = 0


def scram_sha256_verifier(
    password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The verifier PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802 and 7677), from the password.

    Made by hand: the lock file has no library that makes one (asyncpg only answers the handshake), and it
    is a few lines of the standard library. PostgreSQL prepares passwords with SASLprep, which changes
    nothing in printable ASCII; other passwords are refused rather than prepared differently.
    """
    if not password or not all(" " < ch <= "~" for ch in password):
        raise ProvisioningError(
            "a role's password must be printable ASCII without spaces (openssl rand -hex 32)"
        )
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _ident(name: str) -> str:
    if not _NAME.match(name) or name.startswith("pg_") or name == "public":
        raise ProvisioningError(f"unsafe role or schema name: {name!r}")
    return f'"{name}"'


def _literal(text: str) -> str:
    # Only verifiers reach here: base64, digits and '$:=+/' (no quote); doubled quotes keep it safe anyway.
    return "'" + text.replace("'", "''") + "'"


def _check(services: Sequence[ServiceRole], admin: str) -> None:
    roles = [s.role for s in services]
    components = [s.component for s in services]
    if len(set(roles)) != len(roles) or len(set(components)) != len(components):
        raise ProvisioningError("each service needs a role of its own")
    for service in services:
        _ident(service.role)
        if service.role == admin:
            # ALTER ROLE ... NOSUPERUSER on ourselves would take the administrator's own rights away.
            raise ProvisioningError(
                f"{service.component}: its role {service.role!r} is the administrator's; give it its own"
            )


async def _ensure_role(conn: asyncpg.Connection, service: ServiceRole) -> bool:
    """Create or update the role; True when it was created now."""
    name = _ident(service.role)
    verifier = scram_sha256_verifier(service.password)
    for attempt in range(_ROLE_ATTEMPTS):
        try:
            created = False
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", service.role):
                try:
                    await conn.execute(f"CREATE ROLE {name} LOGIN")
                    created = True
                except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
                    pass  # made by a provisioner running at the same moment
            await conn.execute(
                f"ALTER ROLE {name} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                f"NOBYPASSRLS INHERIT PASSWORD {_literal(verifier)}"
            )
            # Explicit, so a server-wide or database-wide search_path cannot point the role elsewhere.
            await conn.execute(f'ALTER ROLE {name} SET search_path TO "$user"')
            return created
        except asyncpg.InternalServerError as exc:
            if "concurrently" not in str(exc) or attempt == _ROLE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _move_legacy(conn: asyncpg.Connection, service: ServiceRole) -> list[str]:
    """Move the component's objects and bookkeeping rows out of `public` into its schema."""
    if await conn.fetchval("SELECT to_regclass('public.schema_migrations')") is None:
        return []
    rows = await conn.fetchval(
        "SELECT count(*) FROM public.schema_migrations WHERE component = $1", service.component
    )
    if not rows:
        return []
    schema = _ident(service.schema)
    tables, functions = LEGACY_OBJECTS.get(service.component, ((), ()))
    moved = []
    for table in tables:
        if await conn.fetchval("SELECT to_regclass($1)", f"public.{table}") is not None:
            await conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {schema}")
            moved.append(table)
    for function in functions:
        if await conn.fetchval("SELECT to_regprocedure($1)", f"public.{function}") is not None:
            await conn.execute(f"ALTER FUNCTION public.{function} SET SCHEMA {schema}")
            moved.append(function)
    await conn.execute(_MIGRATIONS_TABLE.format(schema=schema))
    copy = (
        f"INSERT INTO {schema}.schema_migrations (component, version, name, applied_at) "  # noqa: S608 (checked name)
        "SELECT component, version, name, applied_at FROM public.schema_migrations WHERE component = $1 "
        "ON CONFLICT DO NOTHING"
    )
    await conn.execute(copy, service.component)
    await conn.execute("DELETE FROM public.schema_migrations WHERE component = $1", service.component)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM public.schema_migrations)"):
        await conn.execute("DROP TABLE public.schema_migrations")
    return moved


# Everything in a schema that has an owner of its own, as the ALTER statement that hands it over. Indexes
# and the sequences of identity or serial columns follow their table; a table's row type follows it too.
_OWNED = """
WITH s AS (SELECT oid FROM pg_namespace WHERE nspname = $1::text),
     r AS (SELECT oid, rolname FROM pg_roles WHERE rolname = $2::text)
SELECT format('ALTER %s %s OWNER TO %I',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              c.oid::regclass, r.rolname)
FROM pg_class c, s, r
WHERE c.relnamespace = s.oid AND c.relowner <> r.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND NOT (c.relkind = 'S' AND EXISTS (
      SELECT 1 FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, r.rolname)
FROM pg_proc p, s, r WHERE p.pronamespace = s.oid AND p.proowner <> r.oid
UNION ALL
SELECT format('ALTER TYPE %s OWNER TO %I', t.oid::regtype, r.rolname)
FROM pg_type t, s, r
WHERE t.typnamespace = s.oid AND t.typowner <> r.oid
  AND (t.typtype IN ('e', 'd', 'r', 'm')
       OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
UNION ALL
SELECT format('ALTER TEXT SEARCH CONFIGURATION %s OWNER TO %I', c.oid::regconfig, r.rolname)
FROM pg_ts_config c, s, r WHERE c.cfgnamespace = s.oid AND c.cfgowner <> r.oid
UNION ALL
SELECT format('ALTER TEXT SEARCH DICTIONARY %s OWNER TO %I', d.oid::regdictionary, r.rolname)
FROM pg_ts_dict d, s, r WHERE d.dictnamespace = s.oid AND d.dictowner <> r.oid
"""


async def _hand_over(conn: asyncpg.Connection, service: ServiceRole) -> int:
    statements = await conn.fetch(_OWNED, service.schema, service.role)
    for (statement,) in statements:
        await conn.execute(statement)
    return len(statements)


async def provision(admin_dsn: str, services: Sequence[ServiceRole]) -> list[Provisioned]:
    """Make each service's role and schema in the database `admin_dsn` names; see the module's docstring."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        admin = str(await conn.fetchval("SELECT current_user"))
        _check(services, admin)
        done = [Provisioned(s.role, created=await _ensure_role(conn, s)) for s in services]
        database = '"' + str(await conn.fetchval("SELECT current_database()")).replace('"', '""') + '"'
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            # PUBLIC may connect to and make temporary tables in a new database, and use `public`.
            await conn.execute(f"REVOKE ALL ON DATABASE {database} FROM PUBLIC")
            if await conn.fetchval("SELECT to_regnamespace('public')") is not None:
                await conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            for service, result in zip(services, done, strict=True):
                role = _ident(service.role)
                await conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {role}")
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {role}")
                await conn.execute(f"ALTER SCHEMA {role} OWNER TO {role}")
                result.moved = await _move_legacy(conn, service)
                result.handed_over = await _hand_over(conn, service)
        return done
    finally:
        await conn.close()


def _url_env(name: str) -> str:
    url = os.environ.get(name, "")
    if not url.startswith(("postgresql://", "postgres://")):
        raise ProvisioningError(f"{name} must be set to a postgresql:// URL")
    return url


def _database(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genai_common.roles", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--admin-url-env", required=True, help="variable holding an administrator's URL of the database"
    )
    parser.add_argument(
        "--service",
        action="append",
        required=True,
        metavar="COMPONENT=VARIABLE",
        help="a component and the variable holding the URL it connects with, e.g. auth=GENAI_AUTH_DATABASE_URL",
    )
    args = parser.parse_args(argv)
    setup_logging("roles", os.environ.get("GENAI_LOG_LEVEL", "INFO"))
    env = os.environ.get("GENAI_ENV", "prod")
    try:
        admin_url = _url_env(args.admin_url_env)
        services = []
        for spec in args.service:
            component, sep, variable = spec.partition("=")
            if not sep or not component or not variable:
                raise ProvisioningError(f"--service {spec!r}: expected COMPONENT=VARIABLE")
            url = _url_env(variable)
            if _database(url) != _database(admin_url):
                raise ProvisioningError(f"{variable} must name the database {args.admin_url_env} names")
            service = ServiceRole.from_url(component, url)
            try:
                check_secret(f"the password in {variable}", SecretStr(service.password), env)
            except ValueError as exc:
                raise ProvisioningError(str(exc)) from None
            services.append(service)
        results = asyncio.run(provision(admin_url, services))
    except ProvisioningError as exc:
        logger.error("%s", exc)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        # asyncpg's messages carry neither the URL nor the statement, so no password.
        logger.error("provisioning failed: %s: %s", type(exc).__name__, exc)
        return 1
    for result in results:
        logger.info(
            "role %s: %s; %d object(s) moved from public%s; %d handed over to it",
            result.role,
            "created" if result.created else "updated",
            len(result.moved),
            f" ({', '.join(result.moved)})" if result.moved else "",
            result.handed_over,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
