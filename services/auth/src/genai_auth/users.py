"""User accounts in PostgreSQL, shared by the gRPC servicer and the admin CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from genai_auth.limits import check_limits, dump_limits
from genai_auth.passwords import Passwords

logger = logging.getLogger(__name__)

ROLES = ("user", "admin")
DEFAULT_ROLE = "user"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
_USERNAME = re.compile(r"[A-Za-z0-9_.@-]{3,64}")

_COLUMNS = (
    "id, username, password_hash, role, disabled, created_at, limits, sessions_valid_after, "
    "source, directory_groups, directory_limits, directory_checked_at"
)

LOCAL = "local"
DIRECTORY = "ldap"

# Serialises "is there an admin yet? if not, create one" across concurrent `genai-auth-admin init` runs.
_FIRST_ADMIN_LOCK = int.from_bytes(hashlib.sha256(b"genai-auth-first-admin").digest()[:8], "big", signed=True)


class InvalidInput(ValueError):
    """A username, password or role that breaks the rules; the message is meant for the caller."""


class UserExists(Exception):
    """A user with that name (in any letter case) already exists."""


class LastAdmin(Exception):
    """The change would leave no enabled admin account."""


class DirectoryManaged(Exception):
    """The change is the directory's to make (a directory user's password or role)."""


def check_username(username: str) -> None:
    if not _USERNAME.fullmatch(username):
        raise InvalidInput("username must be 3 to 64 characters, using only letters, digits and _ . @ -")


def nameable(username: str) -> bool:
    """Whether a user could have this name: PostgreSQL text holds no NUL, so a name with one names nobody
    (and is not sent in a query, where it would fail as an error instead of matching no one)."""
    return "\x00" not in username


def check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long")


def check_role(role: str) -> str:
    """Return the role to store: the given one, or the default when none is given."""
    role = role or DEFAULT_ROLE
    if role not in ROLES:
        raise InvalidInput("role must be 'user' or 'admin'")
    return role


def generate_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class User:
    """One account as stored."""

    id: uuid.UUID
    username: str
    role: str
    disabled: bool
    created_at: datetime
    # None for a directory user: the directory checks the password.
    password_hash: str | None = field(repr=False)
    # Per-user limit overrides set by an admin (see genai_auth.limits); empty: the role's defaults apply.
    limits: dict[str, int]
    # Tokens issued before this moment are refused (set by a password reset); None: no reset yet.
    sessions_valid_after: datetime | None = None
    # "local" (a password of ours) or "ldap" (signs in through the directory).
    source: str = LOCAL
    # A directory user's mapped groups, the limits they give, and when the directory was last asked.
    directory_groups: tuple[str, ...] = ()
    directory_limits: dict[str, int] = field(default_factory=dict)
    directory_checked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return cls(
            id=row["id"],
            username=row["username"],
            role=row["role"],
            disabled=row["disabled"],
            created_at=row["created_at"],
            password_hash=row["password_hash"],
            # Written only by set_limits, which checked it; asyncpg hands jsonb over as text.
            limits=json.loads(row["limits"]),
            sessions_valid_after=row["sessions_valid_after"],
            source=row["source"],
            directory_groups=tuple(row["directory_groups"]),
            directory_limits=json.loads(row["directory_limits"]),
            directory_checked_at=row["directory_checked_at"],
        )

    @property
    def from_directory(self) -> bool:
        return self.source == DIRECTORY

    @property
    def effective_limits(self) -> dict[str, int]:
        """What the gateway enforces beyond the role's defaults: the directory groups' limits with an
        admin's overrides laid over them, key by key."""
        return {**self.directory_limits, **self.limits}

    def session_predates_reset(self, issued_at: int) -> bool:
        """Whether a token issued at `issued_at` (seconds since the epoch) was issued before the last
        password reset. Token times have one-second resolution, so a token issued within the second of
        the reset still counts as newer: refusing those would also refuse a login right after it."""
        return self.sessions_valid_after is not None and issued_at < int(
            self.sessions_valid_after.timestamp()
        )


@dataclass(frozen=True)
class PasswordReset:
    """The outcome of UserStore.reset_password: the user, and the password when it was generated."""

    user: User
    generated: str | None


class UserStore:
    """The users table. The only code that writes password hashes, so a password is always validated
    and stored as argon2id, whoever creates or changes it."""

    def __init__(self, pool: asyncpg.Pool, passwords: Passwords) -> None:
        self._pool = pool
        self._passwords = passwords

    async def create(self, username: str, password: str, role: str = DEFAULT_ROLE) -> User:
        """Validate and add a user; raises InvalidInput or UserExists."""
        check_username(username)
        check_password(password)
        role = check_role(role)
        password_hash = await self._passwords.hash(password)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, $3) "  # noqa: S608 (constant columns)
                f"RETURNING {_COLUMNS}",
                username,
                password_hash,
                role,
            )
        except asyncpg.UniqueViolationError as exc:
            raise UserExists(username) from exc
        assert row is not None
        return User.from_row(row)

    async def create_first_admin(self, username: str, password: str) -> User | None:
        """Create an admin unless one exists already (then return None); safe to run concurrently."""
        check_username(username)
        check_password(password)
        password_hash = await self._passwords.hash(password)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_ADMIN_LOCK)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')"):
                return None
            try:
                row = await conn.fetchrow(
                    "INSERT INTO users (username, password_hash, role) VALUES ($1, $2, 'admin') "  # noqa: S608 (constant columns)
                    f"RETURNING {_COLUMNS}",
                    username,
                    password_hash,
                )
            except asyncpg.UniqueViolationError as exc:
                raise UserExists(username) from exc
        assert row is not None
        return User.from_row(row)

    async def has_admin(self) -> bool:
        return bool(await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin')"))

    async def get_by_username(self, username: str) -> User | None:
        if not nameable(username):
            return None
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM users WHERE lower(username) = lower($1)",  # noqa: S608 (constant columns)
            username,
        )
        return User.from_row(row) if row else None

    async def get_by_id(self, user_id: str) -> User | None:
        try:
            key = uuid.UUID(user_id)
        except ValueError:
            return None
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM users WHERE id = $1",  # noqa: S608 (constant columns)
            key,
        )
        return User.from_row(row) if row else None

    async def list_page(self, after: str | None, limit: int) -> list[User]:
        """Up to `limit` users ordered by lower-cased name, starting after the name `after`."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM users "  # noqa: S608 (constant columns)
            "WHERE $1::text IS NULL OR lower(username) > $1 "
            "ORDER BY lower(username) LIMIT $2",
            after.lower() if after is not None else None,
            limit,
        )
        return [User.from_row(row) for row in rows]

    async def set_disabled(self, username: str, disabled: bool) -> User | None:
        """Disable or enable a user; None if there is no such user."""
        if not nameable(username):
            return None
        row = await self._pool.fetchrow(
            "UPDATE users SET disabled = $2, updated_at = now() WHERE lower(username) = lower($1) "  # noqa: S608 (constant columns)
            f"RETURNING {_COLUMNS}",
            username,
            disabled,
        )
        return User.from_row(row) if row else None

    async def set_limits(self, username: str, limits: Mapping[str, int]) -> User | None:
        """Replace a user's limit overrides as a whole ({} clears them); None if there is no such user.
        Raises InvalidLimits, so that nothing but valid overrides is ever stored."""
        limits_json = dump_limits(check_limits(limits))
        if not nameable(username):
            return None
        row = await self._pool.fetchrow(
            "UPDATE users SET limits = $2::jsonb, updated_at = now() WHERE lower(username) = lower($1) "  # noqa: S608 (constant columns)
            f"RETURNING {_COLUMNS}",
            username,
            limits_json,
        )
        return User.from_row(row) if row else None

    async def set_role(self, username: str, role: str) -> User | None:
        """Make a user an admin or a plain user; None if there is no such user. Raises InvalidInput for
        an unknown role and LastAdmin when that would demote the last enabled admin."""
        if role not in ROLES:
            raise InvalidInput("role must be 'user' or 'admin'")
        if not nameable(username):
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            # The same lock as the first admin's creation: two admins demoting each other at once
            # must not both succeed.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_ADMIN_LOCK)
            found = await conn.fetchrow(
                "SELECT role, source FROM users WHERE lower(username) = lower($1)", username
            )
            if found is None:
                return None
            if found["source"] == DIRECTORY:
                raise DirectoryManaged(username)
            current = found["role"]
            if (
                current == "admin"
                and role != "admin"
                and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND NOT disabled "
                    "AND lower(username) <> lower($1))",
                    username,
                )
            ):
                raise LastAdmin(username)
            row = await conn.fetchrow(
                "UPDATE users SET role = $2, updated_at = now() WHERE lower(username) = lower($1) "  # noqa: S608 (constant columns)
                f"RETURNING {_COLUMNS}",
                username,
                role,
            )
        return User.from_row(row) if row else None

    async def set_password(self, user_id: uuid.UUID, password: str, *, end_sessions: bool = False) -> None:
        """Validate and store a new password; with end_sessions, tokens issued before now stop working."""
        check_password(password)
        password_hash = await self._passwords.hash(password)
        await self._pool.execute(
            "UPDATE users SET password_hash = $2, updated_at = now(), "
            "sessions_valid_after = CASE WHEN $3 THEN now() ELSE sessions_valid_after END WHERE id = $1",
            user_id,
            password_hash,
            end_sessions,
        )

    async def reset_password(self, username: str, password: str | None = None) -> PasswordReset | None:
        """An administrator's reset: set the given password, or a generated one when none is given, and
        end the user's sessions (API keys stay valid). None if there is no such user; raises InvalidInput."""
        user = await self.get_by_username(username)
        if user is None:
            return None
        if user.from_directory:
            raise DirectoryManaged(username)
        chosen = password or generate_password()
        await self.set_password(user.id, chosen, end_sessions=True)
        return PasswordReset(user, None if password else chosen)

    async def check_password(self, user: User, password: str) -> bool:
        """Verify a user's password, upgrading the stored hash if the hashing parameters changed."""
        if user.password_hash is None:
            # A directory user: never a local password, but as slow as one to refuse.
            await self._passwords.verify_dummy(password)
            return False
        if not await self._passwords.verify(user.password_hash, password):
            return False
        if self._passwords.needs_rehash(user.password_hash):
            new_hash = await self._passwords.hash(password)
            # Only replaces the hash just verified, never one that changed meanwhile.
            await self._pool.execute(
                "UPDATE users SET password_hash = $3, updated_at = now() WHERE id = $1 AND password_hash = $2",
                user.id,
                user.password_hash,
                new_hash,
            )
            logger.info("rehashed the password of user %s with the current parameters", user.id)
        return True

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the username exists and the password is right (disabled or not), else None.

        Takes as long for an unknown username as for a wrong password, so timing does not tell
        whether an account exists.
        """
        user = await self.get_by_username(username)
        if user is None:
            await self._passwords.verify_dummy(password)
            return None
        return user if await self.check_password(user, password) else None

    async def save_directory_user(
        self, login: str, dn: str, role: str, limits: Mapping[str, int], groups: tuple[str, ...]
    ) -> User | None:
        """Provision a directory user at their first login, or bring their role, limits and groups up
        to date with the directory; None when a local account already has that name (the directory
        does not take it over). Raises InvalidInput for a login name that cannot be a username here."""
        check_username(login)
        role = check_role(role)
        row = await self._pool.fetchrow(
            "INSERT INTO users (username, password_hash, role, source, directory_dn, directory_groups, "  # noqa: S608 (constant columns)
            "directory_limits, directory_checked_at) VALUES ($1, NULL, $2, 'ldap', $3, $4, $5::jsonb, now()) "
            "ON CONFLICT (lower(username)) DO UPDATE SET role = EXCLUDED.role, "
            "directory_dn = EXCLUDED.directory_dn, directory_groups = EXCLUDED.directory_groups, "
            "directory_limits = EXCLUDED.directory_limits, directory_checked_at = now(), updated_at = now() "
            f"WHERE users.source = 'ldap' RETURNING {_COLUMNS}",
            login,
            role,
            dn,
            list(groups),
            dump_limits(check_limits(limits)),
        )
        return User.from_row(row) if row else None

    async def end_sessions(self, user_id: uuid.UUID) -> None:
        """Refuse every token issued to the user before now (API keys stay valid)."""
        await self._pool.execute(
            "UPDATE users SET sessions_valid_after = now(), updated_at = now() WHERE id = $1", user_id
        )

    async def touch(self, user_id: uuid.UUID) -> None:
        """Announce a change of the user's credentials (the change feed tells gateways to forget what
        they cached for them) without changing anything else."""
        await self._pool.execute("UPDATE users SET updated_at = now() WHERE id = $1", user_id)
