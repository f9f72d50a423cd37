"""genai-auth-admin: database setup, the first admin account, and user management from a shell.

Needs only GENAI_AUTH_DATABASE_URL (plus the optional GENAI_ADMIN_USER / GENAI_ADMIN_PASSWORD for
`init`): no JWT secret and no Redis, so it runs as a one-shot job before the service starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import asyncpg
from genai_common.db import create_pool
from genai_common.settings import load_settings

from genai_auth.passwords import Passwords
from genai_auth.schema import apply_migrations
from genai_auth.settings import CliSettings
from genai_auth.users import ROLES, InvalidInput, UserExists, UserStore

DEFAULT_ADMIN = "admin"
LIST_PAGE = 200


class CliError(Exception):
    """A failure to report on stderr as one line, ending the command with exit status 1."""


def _out(line: str, *, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout)  # noqa: T201 (a CLI's output is its interface)


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def _show_generated_password(password: str) -> None:
    _out(f"password: {password}")
    _out("This password is shown only once: store it safely and change it after the first login.")


@asynccontextmanager
async def _user_store(settings: CliSettings) -> AsyncIterator[UserStore]:
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield UserStore(pool, Passwords.from_settings(settings))
    finally:
        await pool.close()


async def init(settings: CliSettings) -> None:
    """Apply migrations and create the first admin if there is none; a no-op when run again."""
    for name in await apply_migrations(settings.database_url):
        _out(f"applied migration {name}")
    async with _user_store(settings) as store:
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
    user = await store.get_by_username(username)
    if user is None:
        raise CliError(f"no user named {username!r}")
    chosen = password or generate_password()
    try:
        await store.set_password(user.id, chosen)
    except InvalidInput as exc:
        raise CliError(str(exc)) from None
    _out(f"password of {user.username!r} changed")
    if password is None:
        _show_generated_password(chosen)


async def set_disabled(store: UserStore, username: str, disabled: bool) -> None:
    user = await store.set_disabled(username, disabled)
    if user is None:
        raise CliError(f"no user named {username!r}")
    _out(f"user {user.username!r} {'disabled' if disabled else 'enabled'}")


async def list_users(store: UserStore) -> None:
    _out(f"{'USERNAME':<32} {'ROLE':<6} {'STATUS':<9} {'CREATED':<20} ID")
    after: str | None = None
    while True:
        users = await store.list_page(after, LIST_PAGE)
        for user in users:
            status = "disabled" if user.disabled else "active"
            created = user.created_at.strftime("%Y-%m-%d %H:%M:%S")
            _out(f"{user.username:<32} {user.role:<6} {status:<9} {created:<20} {user.id}")
        if len(users) < LIST_PAGE:
            return
        after = users[-1].username


async def run(args: argparse.Namespace, settings: CliSettings, password: str | None = None) -> int:
    """Run one parsed command; `password` is the one read from stdin, if any. Returns the exit status."""
    try:
        if args.command == "init":
            await init(settings)
            return 0
        async with _user_store(settings) as store:
            if args.command == "create-user":
                await create_user(store, args.username, args.role, password)
            elif args.command == "reset-password":
                await reset_password(store, args.username, password)
            elif args.command in ("disable", "enable"):
                await set_disabled(store, args.username, args.command == "disable")
            elif args.command == "list":
                await list_users(store)
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
    commands.add_parser("disable", help="disable a user: no login, tokens refused").add_argument("username")
    commands.add_parser("enable", help="enable a disabled user").add_argument("username")
    commands.add_parser("list", help="list all users")
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
