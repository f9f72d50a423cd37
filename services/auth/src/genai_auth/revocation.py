"""Revoked token ids, kept in Redis only as long as the tokens themselves would have lived."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as redis

KEY_PREFIX = "auth:revoked:"


class RevocationList:
    """Token ids (jti) that must no longer be accepted, each expiring with its token."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._clock = clock

    def _ttl(self, expires_at: int) -> int:
        return max(1, expires_at - int(self._clock()))

    async def revoke(self, jti: str, expires_at: int) -> None:
        await self._redis.set(KEY_PREFIX + jti, b"1", ex=self._ttl(expires_at))

    async def revoke_once(self, jti: str, expires_at: int) -> bool:
        """Revoke and report whether this call did it: False means someone revoked (or used) it first.

        One atomic SET NX, so two concurrent refreshes with the same token cannot both succeed.
        """
        return bool(await self._redis.set(KEY_PREFIX + jti, b"1", ex=self._ttl(expires_at), nx=True))

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self._redis.exists(KEY_PREFIX + jti))
