"""Telegram links: one-time codes, and the chat-scoped API keys the bot acts with.

How a link is made, and why so:
- a user asks for a code (the web page shows it once); only a SHA-256 of it is stored, with a short expiry;
- the bot sends the code it was given, with the Telegram account that gave it; the code is the credential
  here (whoever holds it could as well type it to the bot), so redeeming needs no other one. It works once:
  the row is locked and marked used before anything else happens;
- the answer carries a new API key of the "chat" scope, once. The bot keeps it encrypted; this side keeps
  only its hash, so neither a dump of this database nor one of the bot's store alone gives it away;
- a Telegram account acts for one user at a time: redeeming a code from an account that is linked already
  ends its earlier link;
- unlinking (either side, or an admin) revokes the link's key in the same statement, and the key's change
  reaches every gateway's credential cache through the change feed (migration 0006).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from genai_auth.api_keys import ApiKeyStore
from genai_auth.users import User

# Easy to read and to type on a phone: no 0/O, 1/I/L. 12 characters of 32 are 60 bits, out of reach of
# guessing in the minutes a code lives; also valid in a t.me/<bot>?start=<code> link.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 12
MAX_LINKS_LISTED = 500
MAX_TELEGRAM_USERNAME = 64
CHAT_SCOPE = "chat"

_LINK_COLUMNS = (
    "l.id, l.user_id, u.username AS owner_username, l.telegram_user_id, l.telegram_username, l.created_at, "
    "l.api_key_id, (l.revoked_at IS NOT NULL OR k.revoked_at IS NOT NULL) AS revoked"
)
_LINK_FROM = "telegram_links l JOIN users u ON u.id = l.user_id JOIN api_keys k ON k.id = l.api_key_id"


class InvalidCode(Exception):
    """A code that is wrong, used or expired: the caller is told no more than that."""


def normalise_code(code: str) -> str:
    """What a person may have typed (lower case, spaces, dashes) as the code was shown."""
    return "".join(ch for ch in code.upper() if ch not in " -\t")


def hash_code(code: str) -> bytes:
    # 60 random bits living minutes: a fast hash is enough, as for API keys.
    return hashlib.sha256(normalise_code(code).encode()).digest()


@dataclass(frozen=True)
class TelegramLink:
    id: uuid.UUID
    user_id: uuid.UUID
    owner_username: str
    telegram_user_id: int
    telegram_username: str
    created_at: datetime
    api_key_id: uuid.UUID
    revoked: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> TelegramLink:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RedeemedLink:
    link: TelegramLink
    api_key: str = field(repr=False)


class TelegramLinks:
    """The telegram_link_codes and telegram_links tables."""

    def __init__(self, api_keys: ApiKeyStore, clock: Callable[[], float] = time.time) -> None:
        # The same database as the keys: a link and its key change together.
        self._pool = api_keys.pool
        self._api_keys = api_keys
        self._clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def create_code(self, owner: User, ttl_s: int) -> tuple[str, datetime]:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        now = self.now()
        expires_at = now + timedelta(seconds=ttl_s)
        async with self._pool.acquire() as conn, conn.transaction():
            # Codes of this user that can no longer be used are dropped as a new one is made.
            await conn.execute(
                "DELETE FROM telegram_link_codes WHERE user_id = $1 AND (used_at IS NOT NULL OR expires_at <= $2)",
                owner.id,
                now,
            )
            await conn.execute(
                "INSERT INTO telegram_link_codes (code_hash, user_id, created_at, expires_at) "
                "VALUES ($1, $2, $3, $4)",
                hash_code(code),
                owner.id,
                now,
                expires_at,
            )
        return code, expires_at

    async def redeem(
        self,
        code: str,
        telegram_user_id: int,
        telegram_username: str,
        users: Callable[[str], Awaitable[User | None]],
    ) -> RedeemedLink:
        """Spend `code` for the Telegram account; raises InvalidCode, or what `ApiKeyStore.create` raises.

        `users` looks the code's owner up (UserStore.get_by_id), so that a disabled user gets no key."""
        now = self.now()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE telegram_link_codes SET used_at = $2 WHERE code_hash = $1 AND used_at IS NULL "
                "AND expires_at > $2 RETURNING user_id",
                hash_code(code),
                now,
            )
        # Committed before the key is made: a code is spent even if what follows fails, never used twice.
        if row is None:
            raise InvalidCode("the code is wrong, already used or expired")
        owner = await users(str(row["user_id"]))
        if owner is None or owner.disabled:
            raise InvalidCode("the code is wrong, already used or expired")
        handle = telegram_username[:MAX_TELEGRAM_USERNAME]
        name = f"Telegram @{handle}" if handle else f"Telegram {telegram_user_id}"
        created = await self._api_keys.create(owner, name, 0, CHAT_SCOPE)
        async with self._pool.acquire() as conn, conn.transaction():
            # The account's earlier link to this user ends, with its key. One to another user is that user's
            # to end (the bot ends it with its own key when the account links elsewhere): the Telegram id
            # comes with the code unproven, and must not let anyone end someone else's link.
            await conn.execute(
                "WITH ended AS (UPDATE telegram_links SET revoked_at = $2 WHERE telegram_user_id = $1 "
                "AND user_id = $3 AND revoked_at IS NULL RETURNING api_key_id) "
                "UPDATE api_keys SET revoked_at = coalesce(api_keys.revoked_at, $2) FROM ended "
                "WHERE api_keys.id = ended.api_key_id",
                telegram_user_id,
                now,
                owner.id,
            )
            link_id = await conn.fetchval(
                "INSERT INTO telegram_links (user_id, api_key_id, telegram_user_id, telegram_username, "
                "created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                owner.id,
                created.key.id,
                telegram_user_id,
                handle,
                now,
            )
        link = TelegramLink(
            id=link_id,
            user_id=owner.id,
            owner_username=owner.username,
            telegram_user_id=telegram_user_id,
            telegram_username=handle,
            created_at=now,
            api_key_id=created.key.id,
            revoked=False,
        )
        return RedeemedLink(link, created.secret)

    async def list(self, owner_id: uuid.UUID | None, *, include_revoked: bool) -> list[TelegramLink]:
        """Links of one user (everyone's when `owner_id` is None), newest first."""
        rows = await self._pool.fetch(
            f"SELECT {_LINK_COLUMNS} FROM {_LINK_FROM} "  # noqa: S608 (constant columns)
            "WHERE ($1::uuid IS NULL OR l.user_id = $1) "
            "AND ($2 OR (l.revoked_at IS NULL AND k.revoked_at IS NULL)) "
            "ORDER BY l.created_at DESC, l.id LIMIT $3",
            owner_id,
            include_revoked,
            MAX_LINKS_LISTED,
        )
        return [TelegramLink.from_row(row) for row in rows]

    async def revoke(
        self, link_id: uuid.UUID, *, owner_id: uuid.UUID | None, api_key_id: uuid.UUID | None = None
    ) -> TelegramLink | None:
        """End a link (of `owner_id` only, when given; the one whose key is `api_key_id` only, when given)
        and revoke its key; None if there is no such link."""
        now = self.now()
        async with self._pool.acquire() as conn, conn.transaction():
            key_id = await conn.fetchval(
                "UPDATE telegram_links SET revoked_at = coalesce(revoked_at, $3) "
                "WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND ($4::uuid IS NULL OR api_key_id = $4) "
                "RETURNING api_key_id",
                link_id,
                owner_id,
                now,
                api_key_id,
            )
            if key_id is None:
                return None
            await conn.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1", key_id, now
            )
            row = await conn.fetchrow(
                f"SELECT {_LINK_COLUMNS} FROM {_LINK_FROM} WHERE l.id = $1",  # noqa: S608 (constant columns)
                link_id,
            )
        return TelegramLink.from_row(row)
