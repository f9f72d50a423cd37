"""genai-auth-admin: database setup, the first admin account, user and API key management from a shell.

Needs only GENAI_AUTH_DATABASE_URL (plus the optional GENAI_ADMIN_USER / GENAI_ADMIN_PASSWORD for
`init`): no JWT secret and no Redis, so it runs as a one-shot job before the service starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TextIO

import asyncpg

from genai_auth.api_keys import ApiKeyStore, Cursor, TooManyKeys
from genai_auth.limits import LIMIT_KEYS, MAX_LIMIT, UNLIMITED, InvalidLimits, dump_limits
from genai_auth.passwords import Passwords
from genai_auth.schema import apply_migrations
from genai_auth.settings import CliSettings
from genai_auth.users import (
    ROLES,
    DirectoryManaged,
    InvalidInput,
    UserExists,
    UserStore,
    generate_password,
)
from genai_common.db import create_pool
from genai_common.settings import load_settings

DEFAULT_ADMIN = "admin"
LIST_PAGE = 200


class CliError(Exception):
    """A failure to report on stderr as one line, ending the command with exit status 1."""


def _out(line: str, *, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout)  # noqa: T201 (a CLI's output is its interface)


def _show_generated_password(password: str) -> None:
    _out(f"password: {password}")
    _out("This password is shown only once: store it safely and change it after the first login.")


@asynccontextmanager
async def _stores(settings: CliSettings) -> AsyncIterator[tuple[UserStore, ApiKeyStore]]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield UserStore(pool, Passwords.from_settings(settings)), ApiKeyStore(pool)
    finally:
        await pool.close()


async def init(settings: CliSettings) -> None:
    """Apply migrations and create the first admin if there is none; a no-op when run again."""
    for name in await apply_migrations(settings.database_url):
        _out(f"applied migration {name}")
    async with _stores(settings) as (store, _):
        if await store.has_admin():
            _out("an admin account exists already; nothing to create")
            return
        username = settings.admin_user or DEFAULT_ADMIN
        given = settings.admin_password.get_secret_value() if settings.admin_password else None
        password = given or generate_password()
        try:
            user = await store.create_first_admin(username, password)
        except InvalidInput as exc:
            raise CliError(f"GENAI_ADMIN_USER / GENAI_ADMIN_PASSWORD: {exc}") from None
        except UserExists:
            raise CliError(
                f"a user named {username!r} exists but is not an admin; set GENAI_ADMIN_USER to another name"
            ) from None
        if user is None:  # another `init` created one meanwhile
            _out("an admin account exists already; nothing to create")
            return
        _out(f"created admin user {user.username!r}")
        if given is None:
            _show_generated_password(password)
        else:
            _out("password: as given in GENAI_ADMIN_PASSWORD")


async def create_user(store: UserStore, username: str, role: str, password: str | None) -> None:
    chosen = password or generate_password()
    try:
        user = await store.create(username, chosen, role)
    except InvalidInput as exc:
        raise CliError(str(exc)) from None
    except UserExists:
        raise CliError(f"user {username!r} already exists") from None
    _out(f"created user {user.username!r} with role {user.role}")
    if password is None:
        _show_generated_password(chosen)


async def reset_password(store: UserStore, username: str, password: str | None) -> None:
    try:
        reset = await store.reset_password(username, password)
    except DirectoryManaged:
        raise CliError(f"{username!r} signs in through the directory: change the password there") from None
    except InvalidInput as exc:
        raise CliError(str(exc)) from None
    if reset is None:
        raise CliError(f"no user named {username!r}")
    _out(f"password of {reset.user.username!r} changed; their sessions have ended")
    if reset.generated is not None:
        _show_generated_password(reset.generated)


async def set_disabled(store: UserStore, username: str, disabled: bool) -> None:
    user = await store.set_disabled(username, disabled)
    if user is None:
        raise CliError(f"no user named {username!r}")
    _out(f"user {user.username!r} {'disabled' if disabled else 'enabled'}")


async def set_limits(store: UserStore, username: str, limits: dict[str, int]) -> None:
    try:
        user = await store.set_limits(username, limits)
    except InvalidLimits as exc:
        raise CliError(str(exc)) from None
    if user is None:
        raise CliError(f"no user named {username!r}")
    if user.limits:
        _out(f"limits of {user.username!r}: {dump_limits(user.limits)}")
    else:
        _out(f"limits of {user.username!r} cleared: the role's defaults apply")


def _limits_from_args(args: argparse.Namespace) -> dict[str, int]:
    given = {key: getattr(args, key) for key in LIMIT_KEYS if getattr(args, key) is not None}
    if args.clear and given:
        raise CliError("--clear replaces all overrides with none; give it alone")
    if not args.clear and not given:
        # Replacing with nothing would silently clear them: make the operator say so.
        raise CliError("give at least one limit, or --clear to remove all overrides")
    return given


async def list_users(store: UserStore) -> None:
    # The limits go last: the one column of varying width.
    # A directory user's row is followed by the mapped groups that gave the role and limits.
    _out(f"{'USERNAME':<32} {'ROLE':<6} {'STATUS':<9} {'SOURCE':<6} {'CREATED':<20} {'ID':<36} LIMITS")
    after: str | None = None
    while True:
        users = await store.list_page(after, LIST_PAGE)
        for user in users:
            status = "disabled" if user.disabled else "active"
            created = user.created_at.strftime("%Y-%m-%d %H:%M:%S")
            _out(
                f"{user.username:<32} {user.role:<6} {status:<9} {user.source:<6} {created:<20} "
                f"{user.id!s:<36} {dump_limits(user.effective_limits)}"
            )
            if user.from_directory:
                _out(f"    directory groups: {'; '.join(user.directory_groups) or 'none mapped'}")
        if len(users) < LIST_PAGE:
            return
        after = users[-1].username


def _when(moment: datetime | None, never: str) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else never


async def create_api_key(
    store: UserStore,
    keys: ApiKeyStore,
    username: str,
    name: str,
    expires_days: int | None,
    *,
    never_expires: bool = False,
    scope: str = "user",
    default_days: int = 90,
) -> None:
    owner = await store.get_by_username(username)
    if owner is None:
        raise CliError(f"no user named {username!r}")
    if owner.disabled:
        raise CliError(f"user {owner.username!r} is disabled; enable it first")
    if expires_days is not None and expires_days < 1:
        raise CliError("--expires-days must be at least 1 (--never-expires for a key that never expires)")
    if never_expires and expires_days is not None:
        raise CliError("give --expires-days or --never-expires, not both")
    days = 0 if never_expires else expires_days or default_days
    try:
        created = await keys.create(owner, name, days * 86_400, scope)
    except (InvalidInput, TooManyKeys) as exc:
        raise CliError(str(exc)) from None
    key = created.key
    _out(f"created API key {key.name!r} for user {owner.username!r}")
    _out(f"id: {key.id}")
    _out(f"scope: {key.scope}")
    _out(f"expires: {_when(key.expires_at, 'never')} UTC" if key.expires_at else "expires: never")
    _out(f"key: {created.secret}")
    _out("This key is shown only once and cannot be recovered: store it safely.")


async def list_api_keys(
    store: UserStore, keys: ApiKeyStore, username: str | None, include_revoked: bool
) -> None:
    owner_id = None
    if username is not None:
        owner = await store.get_by_username(username)
        if owner is None:
            raise CliError(f"no user named {username!r}")
        owner_id = owner.id
    now = keys.now()
    # The name goes last: it is the one column that may contain spaces.
    _out(
        f"{'ID':<36} {'PREFIX':<11} {'OWNER':<32} {'STATUS':<7} {'CREATED':<19} "
        f"{'LAST USED':<19} {'EXPIRES':<19} NAME"
    )
    after = None
    while True:
        page = await keys.list_page(owner_id, after=after, limit=LIST_PAGE, include_revoked=include_revoked)
        for key in page:
            _out(
                f"{key.id!s:<36} {'gk-' + key.prefix:<11} {key.owner_username:<32} {key.status(now):<7} "
                f"{_when(key.created_at, '-'):<19} {_when(key.last_used_at, 'never'):<19} "
                f"{_when(key.expires_at, 'never'):<19} {key.name}"
            )
        if len(page) < LIST_PAGE:
            return
        after = Cursor(page[-1].created_at, page[-1].id)


async def revoke_api_key(keys: ApiKeyStore, key_id: str) -> None:
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise CliError(f"{key_id!r} is not an API key id (a UUID, as `list-api-keys` shows)") from None
    before = await keys.get(parsed)
    key = await keys.revoke(parsed)
    if key is None:
        raise CliError(f"no API key with id {key_id}")
    already = " (it was revoked already)" if before is not None and before.revoked else ""
    _out(f"revoked API key {key.name!r} of user {key.owner_username!r}{already}")


async def run(args: argparse.Namespace, settings: CliSettings, password: str | None = None) -> int:
    """Run one parsed command; `password` is the one read from stdin, if any. Returns the exit status."""
    try:
        if args.command == "init":
            await init(settings)
            return 0
        async with _stores(settings) as (store, keys):
            if args.command == "create-user":
                await create_user(store, args.username, args.role, password)
            elif args.command == "reset-password":
                await reset_password(store, args.username, password)
            elif args.command in ("disable", "enable"):
                await set_disabled(store, args.username, args.command == "disable")
            elif args.command == "set-limits":
                await set_limits(store, args.username, _limits_from_args(args))
            elif args.command == "list":
                await list_users(store)
            elif args.command == "create-api-key":
                await create_api_key(
                    store,
                    keys,
                    args.username,
                    args.name,
                    args.expires_days,
                    never_expires=args.never_expires,
                    scope=args.scope,
                    default_days=settings.keys_default_ttl_days,
                )
            elif args.command == "list-api-keys":
                await list_api_keys(store, keys, args.username, args.include_revoked)
            elif args.command == "revoke-api-key":
                await revoke_api_key(keys, args.id)
    except CliError as exc:
        _out(f"error: {exc}", err=True)
        return 1
    except asyncpg.UndefinedTableError:
        _out("error: the database has no users table yet; run `genai-auth-admin init` first", err=True)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        _out(f"error: database: {exc}", err=True)
        return 1
    return 0


def read_password(stream: TextIO) -> str:
    """The first line of `stream`, without its line ending (a password may contain spaces)."""
    return stream.readline().rstrip("\r\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genai-auth-admin",
        description="Manage the GenAI auth database. Reads GENAI_AUTH_DATABASE_URL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "init",
        help="apply migrations and create the first admin (GENAI_ADMIN_USER / GENAI_ADMIN_PASSWORD, "
        "or 'admin' with a generated password printed once)",
    )
    create = commands.add_parser(
        "create-user", help="create a user (password generated unless --password-stdin)"
    )
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, default="user")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    reset = commands.add_parser(
        "reset-password", help="set a new password (generated unless --password-stdin)"
    )
    reset.add_argument("username")
    reset.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    commands.add_parser("disable", help="disable a user: no login, tokens and API keys refused").add_argument(
        "username"
    )
    commands.add_parser("enable", help="enable a disabled user").add_argument("username")
    limits = commands.add_parser(
        "set-limits",
        help="replace a user's limit overrides: the given limits become the whole set, the others "
        "follow the role's defaults",
    )
    limits.add_argument("username")
    for key in LIMIT_KEYS:
        limits.add_argument(
            f"--{key.replace('_', '-')}",
            dest=key,
            type=int,
            metavar="N",
            help=f"1 to {MAX_LIMIT}, or {UNLIMITED} for unlimited",
        )
    limits.add_argument(
        "--clear", action="store_true", help="remove all overrides: the role's defaults apply"
    )
    commands.add_parser("list", help="list all users")
    create_key = commands.add_parser("create-api-key", help="create an API key for a user (printed once)")
    create_key.add_argument("username")
    create_key.add_argument("--name", required=True, help="what the key is for, 1 to 100 characters")
    create_key.add_argument(
        "--expires-days",
        type=int,
        metavar="N",
        help="valid for N days (default: GENAI_AUTH_KEYS_DEFAULT_TTL_DAYS, 90)",
    )
    create_key.add_argument("--never-expires", action="store_true", help="a key that never expires")
    create_key.add_argument(
        "--scope",
        choices=("user", "admin"),
        default="user",
        help="admin: acts with the admin role (an admin's key only); default user",
    )
    list_keys = commands.add_parser("list-api-keys", help="list API keys, of one user or of everyone")
    list_keys.add_argument("username", nargs="?")
    list_keys.add_argument("--include-revoked", action="store_true", help="list revoked keys too")
    commands.add_parser("revoke-api-key", help="revoke an API key at once").add_argument(
        "id", help="the key's id, as list-api-keys shows"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(CliSettings)
    password = read_password(sys.stdin) if getattr(args, "password_stdin", False) else None
    if password == "":
        _out("error: --password-stdin given but stdin's first line is empty", err=True)
        return 1
    return asyncio.run(run(args, settings, password))


if __name__ == "__main__":
    raise SystemExit(main())
