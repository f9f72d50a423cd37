"""argon2id password hashing, kept off the event loop."""

from __future__ import annotations

import asyncio
import logging
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from genai_auth.settings import UserStoreSettings

logger = logging.getLogger(__name__)


class Passwords:
    """Hashes and verifies passwords with argon2id in worker threads.

    A verification costs tens of milliseconds of CPU by design; running it inline would stall every
    other RPC of the process for that long.
    """

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: UserStoreSettings) -> Passwords:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost,
            parallelism=settings.argon2_parallelism,
        )

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await asyncio.to_thread(self._verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(password_hash)

    async def verify_dummy(self, password: str) -> None:
        """Spend the time of a real verification when there is no user, so that answers for unknown
        and known usernames take equally long."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(18))
        await self.verify(self._dummy_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except InvalidHashError:
            logger.warning("stored password hash is not a valid argon2 hash")
            return False
        except VerificationError:
            return False
