"""argon2id password hashing, kept off the event loop."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from genai_auth.settings import UserStoreSettings

logger = logging.getLogger(__name__)

# glibc's mallopt(M_MMAP_THRESHOLD): requests of at least this size are mapped on their own and unmapped
# when freed. 1 MiB: argon2's working area (GENAI_AUTH_ARGON2_MEMORY_COST, 8 MiB and more) always is.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_hashing_memory() -> None:
    """Have each hash's working area given back to the system when the hash is done.

    glibc maps a large request on its own and unmaps it when freed, but after such a free it raises that
    threshold to the freed size (up to 32 MiB): every later working area below 32 MiB is then carved from
    the hashing thread's own heap and kept there, one per thread that ever hashed (8 MiB each at the
    tests' cost, 19 MiB each at OWASP's minimum). A fixed threshold stops the raise. Production's 64 MiB
    is above 32 MiB and was always unmapped. MALLOC_MMAP_THRESHOLD_ in the environment wins; on a C
    library without mallopt, nothing to do.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


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
