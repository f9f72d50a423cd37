"""API keys in PostgreSQL, shared by the gRPC servicer and the admin CLI.

A key reads ``gk-<prefix>_<secret>``: the 8-character prefix is public (stored plain, shown in lists,
used to find the row) and the secret is 32 random bytes. Only a SHA-256 of the whole key is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from genai_auth.users import InvalidInput, User

logger = logging.getLogger(__name__)

KEY_PREFIX = "gk-"
PREFIX_LENGTH = 8
SECRET_BYTES = 32
MAX_NAME_LENGTH = 100
MAX_ACTIVE_KEYS_PER_USER = 50
# Far enough for any real use; "never" is 0. Also keeps the arithmetic inside datetime's range.
MAX_EXPIRES_IN_S = 10 * 366 * 86_400
# last_used_at is for humans deciding which keys are stale: minute precision is plenty, and writing
# on every request would turn each authenticated call into a row update.
LAST_USED_RESOLUTION = timedelta(seconds=60)

# Lower-case letters and digits only: the prefix is read and typed by people, and never contains the
# "_" that separates it from the secret.
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_LENGTH = len(secrets.token_urlsafe(SECRET_BYTES))
_KEY_FORMAT = re.compile(
    rf"{re.escape(KEY_PREFIX)}([a-z0-9]{{{PREFIX_LENGTH}}})_[A-Za-z0-9_-]{{{_SECRET_LENGTH}}}"
)
_PREFIX_ATTEMPTS = 5

_KEY_COLUMNS = (
    "k.id, k.user_id, u.username AS owner_username, k.name, k.prefix, k.created_at, k.last_used_at, "
    "k.expires_at, k.revoked_at, k.scope"
)
# "chat": a Telegram link's key (genai_auth.telegram), made only by redeeming a link code.
SCOPES = ("user", "admin", "chat")


class InvalidApiKey(Exception):
    """A key that cannot be trusted. The message says why, for debug logs only: callers get the same
    answer as for a bad access token."""


class TooManyKeys(Exception):
    """The owner already has the maximum number of active keys; the message is meant for the caller."""


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer token is meant as an API key (rather than a JWT, which never starts so)."""
    return token.startswith(KEY_PREFIX)


def hash_key(key: str) -> bytes:
    # A fast hash is right here, unlike for passwords: the key carries 256 random bits, so there is
    # nothing to brute-force, and argon2 on every authenticated request would cost tens of ms of CPU.
    return hashlib.sha256(key.encode()).digest()


def check_name(name: str) -> str:
    """Return the name to store (surrounding spaces dropped); raises InvalidInput if unusable."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidInput(f"name must be 1 to {MAX_NAME_LENGTH} printable characters")
    return name


def check_expires_in(expires_in_s: int) -> None:
    if not 0 <= expires_in_s <= MAX_EXPIRES_IN_S:
        raise InvalidInput(f"expires_in_s must be 0 (never) to {MAX_EXPIRES_IN_S} seconds")


@dataclass(frozen=True)
class ApiKey:
    """One key as stored, without its hash."""

    id: uuid.UUID
    user_id: uuid.UUID
    owner_username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    # "user": the key acts with the user role; "admin": with its owner's role; "chat": as "user", and only
    # chats and reads history (the gateway and this service refuse it anything else).
    scope: str = "user"

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKey:
        return cls(
            id=row["id"],
            user_id=row["user_id"],
            owner_username=row["owner_username"],
            name=row["name"],
            prefix=row["prefix"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
            scope=row["scope"],
        )

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def status(self, now: datetime) -> str:
        if self.revoked:
            return "revoked"
        return "expired" if self.expired(now) else "active"


@dataclass(frozen=True)
class CreatedApiKey:
    """A new key and its secret, which exists nowhere else: it is for the caller to keep."""

    key: ApiKey
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Cursor:
    """Where the next page of a key listing starts: after this (created_at, id)."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises ValueError for anything this class did not produce."""
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
        except (ValueError, UnicodeDecodeError) as exc:  # binascii.Error is a ValueError
            raise ValueError("invalid page token") from exc
        created, _, key_id = raw.partition("|")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("invalid page token")
        return cls(created_at, uuid.UUID(key_id))


def _new_key() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    return prefix, f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}"


class ApiKeyStore:
    """The api_keys table: creating, checking, listing and revoking keys. The only code that sees a
    key's secret, so every key is generated and hashed the same way whoever asks for it."""

    def __init__(self, pool: asyncpg.Pool, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._clock = clock

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def create(
        self, owner: User, name: str, expires_in_s: int = 0, scope: str = "user"
    ) -> CreatedApiKey:
        """A new key for `owner` (expires_in_s 0: never); raises InvalidInput, or TooManyKeys when the
        owner has the maximum."""
        name = check_name(name)
        check_expires_in(expires_in_s)
        if scope not in SCOPES:
            raise InvalidInput("scope must be 'user' or 'admin'")
        if scope == "admin" and owner.role != "admin":
            raise InvalidInput("only an admin's key can have the admin scope")
        now = self.now()
        expires_at = now + timedelta(seconds=expires_in_s) if expires_in_s else None
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock serialises one user's concurrent creations, so the count below stays true
            # until the insert commits; it also tells us whether the user still exists.
            locked = await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", owner.id)
            if locked is None:
                raise InvalidInput(f"no user named {owner.username!r}")
            active = await conn.fetchval(
                "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > $2)",
                owner.id,
                now,
            )
            if active >= MAX_ACTIVE_KEYS_PER_USER:
                raise TooManyKeys(
                    f"user {owner.username!r} already has {MAX_ACTIVE_KEYS_PER_USER} active API keys; "
                    "revoke one first"
                )
            for attempt in range(_PREFIX_ATTEMPTS):
                prefix, secret = _new_key()
                try:
                    # A savepoint, so that a prefix collision does not abort the whole transaction.
                    async with conn.transaction():
                        row = await conn.fetchrow(
                            "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at, expires_at, "
                            "scope) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                            owner.id,
                            name,
                            prefix,
                            hash_key(secret),
                            now,
                            expires_at,
                            scope,
                        )
                except asyncpg.UniqueViolationError:
                    logger.warning("api key prefix collision (attempt %s); drawing another", attempt + 1)
                    continue
                assert row is not None
                key = ApiKey(
                    id=row["id"],
                    user_id=owner.id,
                    owner_username=owner.username,
                    name=name,
                    prefix=prefix,
                    created_at=now,
                    last_used_at=None,
                    expires_at=expires_at,
                    revoked_at=None,
                    scope=scope,
                )
                return CreatedApiKey(key, secret)
        # 36^8 prefixes: reaching this means the random source is broken, not bad luck.
        raise RuntimeError("could not draw an unused api key prefix")

    async def authenticate(self, secret: str) -> tuple[ApiKey, User]:
        """The key and its owner if `secret` is a valid, unrevoked, unexpired key of an enabled user;
        raises InvalidApiKey otherwise. Records the use, at most once per LAST_USED_RESOLUTION."""
        match = _KEY_FORMAT.fullmatch(secret)
        if match is None:
            raise InvalidApiKey("malformed api key")
        row = await self._pool.fetchrow(
            f"SELECT {_KEY_COLUMNS}, k.key_hash, u.password_hash, u.role, u.disabled, "  # noqa: S608 (constant columns)
            "u.created_at AS user_created_at, u.limits, u.source, u.directory_limits, u.directory_checked_at "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.prefix = $1",
            match.group(1),
        )
        if row is None:
            raise InvalidApiKey("unknown api key prefix")
        if not hmac.compare_digest(bytes(row["key_hash"]), hash_key(secret)):
            raise InvalidApiKey("wrong api key secret")
        key = ApiKey.from_row(row)
        now = self.now()
        if key.revoked:
            raise InvalidApiKey("api key revoked")
        if key.expired(now):
            raise InvalidApiKey("api key expired")
        if row["disabled"]:
            raise InvalidApiKey("owner of the api key is disabled")
        owner = User(
            id=key.user_id,
            username=key.owner_username,
            # A user-scoped key of an admin acts as a user: a leaked script key is not an admin's power.
            role=row["role"] if key.scope == "admin" else "user",
            disabled=row["disabled"],
            created_at=row["user_created_at"],
            password_hash=row["password_hash"],
            limits=json.loads(row["limits"]),
            source=row["source"],
            directory_limits=json.loads(row["directory_limits"]),
            directory_checked_at=row["directory_checked_at"],
        )
        if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
            # Conditional, so concurrent requests with the same key (on any replica) write it once.
            await self._pool.execute(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 "
                "AND (last_used_at IS NULL OR last_used_at <= $3)",
                key.id,
                now,
                now - LAST_USED_RESOLUTION,
            )
        return key, owner

    async def list_page(
        self,
        owner_id: uuid.UUID | None,
        *,
        after: Cursor | None = None,
        limit: int,
        include_revoked: bool = False,
    ) -> list[ApiKey]:
        """Up to `limit` keys of one user (or of everyone when `owner_id` is None), oldest first,
        starting after `after`."""
        rows = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id "  # noqa: S608 (constant columns)
            "WHERE ($1::uuid IS NULL OR k.user_id = $1) AND ($2 OR k.revoked_at IS NULL) "
            "AND ($3::timestamptz IS NULL OR (k.created_at, k.id) > ($3, $4::uuid)) "
            "ORDER BY k.created_at, k.id LIMIT $5",
            owner_id,
            include_revoked,
            after.created_at if after else None,
            after.id if after else None,
            limit,
        )
        return [ApiKey.from_row(row) for row in rows]

    async def get(self, key_id: uuid.UUID) -> ApiKey | None:
        row = await self._pool.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",  # noqa: S608 (constant columns)
            key_id,
        )
        return ApiKey.from_row(row) if row else None

    async def revoke_all(self, owner_id: uuid.UUID) -> int:
        """Revoke every key of a user that is not revoked yet; how many."""
        result = await self._pool.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            owner_id,
            self.now(),
        )
        return int(result.rsplit(" ", 1)[-1])

    async def revoke(self, key_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> ApiKey | None:
        """Revoke a key (of `owner_id` only, when given); None if there is no such key. Revoking a
        revoked key changes nothing and returns it as it is."""
        row = await self._pool.fetchrow(
            "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, $3) FROM users u "  # noqa: S608 (constant columns)
            "WHERE u.id = k.user_id AND k.id = $1 AND ($2::uuid IS NULL OR k.user_id = $2) "
            f"RETURNING {_KEY_COLUMNS}",
            key_id,
            owner_id,
            self.now(),
        )
        return ApiKey.from_row(row) if row else None
