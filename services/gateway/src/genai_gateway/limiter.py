"""Requests-per-window limit per user in Redis: one Lua script decides and records atomically.

A sliding log (sorted set of request times) rather than a fixed window, so a burst across a minute
boundary cannot admit twice the limit. Redis's own clock is used, so gateways with skewed clocks agree.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass

import redis.asyncio as redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_SLIDING_LOG = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, limit - count - 1, tonumber(oldest[2]) + window - now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    # Milliseconds until a slot frees up (for Retry-After and X-RateLimit-Reset).
    reset_ms: int

    def headers(self) -> dict[str, str]:
        reset_s = str(max(1, math.ceil(self.reset_ms / 1000)))
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": reset_s,
        }
        if not self.allowed:
            headers["Retry-After"] = reset_s
        return headers


class RateLimiter:
    """Admits at most `limit` requests per `window_s` for each key."""

    def __init__(self, client: redis.Redis, limit: int, window_s: int, prefix: str = "rl") -> None:
        self.limit = limit
        self.window_ms = window_s * 1000
        self.prefix = prefix
        self._script = client.register_script(_SLIDING_LOG)

    async def hit(self, key: str) -> Decision:
        try:
            allowed, remaining, reset_ms = await self._script(
                keys=[f"{self.prefix}:{key}"], args=[self.window_ms, self.limit, uuid.uuid4().hex]
            )
        except RedisError as exc:
            # Redis down must not take the service down: admit, and say so in the logs and /health.
            logger.warning("rate limiter unavailable, admitting request: %s", exc)
            return Decision(True, self.limit, self.limit, self.window_ms)
        return Decision(bool(allowed), self.limit, int(remaining), int(reset_ms))
