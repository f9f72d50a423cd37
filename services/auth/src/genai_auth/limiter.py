"""Throttling of failed logins per account and per client address, counted atomically in Redis."""

from __future__ import annotations

import hashlib
import logging

import redis.asyncio as redis

logger = logging.getLogger(__name__)

ACCOUNT_PREFIX = "auth:login-failures:account:"
ADDRESS_PREFIX = "auth:login-failures:address:"

# Every attempt is counted when it starts, in the same script that checks the limit: checking first
# and counting after the (slow) password check would let a burst of parallel guesses all pass the
# check. A successful attempt takes its count back afterwards (see _SUCCEEDED).
# KEYS: the counters; ARGV[1]: window in seconds; ARGV[2..]: the limit of each counter.
# Returns 0 when the attempt may go ahead, otherwise the seconds until it may be retried.
_BEGIN = """
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i + 1]) then
    local ttl = redis.call('TTL', key)
    if ttl < 0 then
      redis.call('EXPIRE', key, window)
      ttl = window
    end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, window) end
end
return 0
"""

# KEYS[1]: the account counter, reset; KEYS[2] (optional): the address counter, given back one attempt.
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
if KEYS[2] and tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  if redis.call('DECR', KEYS[2]) <= 0 then redis.call('DEL', KEYS[2]) end
end
return 0
"""


def _key(prefix: str, value: str) -> str:
    # Hashed: usernames and addresses come from callers, so their length and bytes are not ours to trust.
    return prefix + hashlib.sha256(value.encode()).hexdigest()


class LoginLimiter:
    """At most `max_per_account` failed logins per username and `max_per_address` per client address
    within a fixed window of `window_s` seconds, which starts at the first failure."""

    def __init__(
        self, client: redis.Redis, *, max_per_account: int, max_per_address: int, window_s: int
    ) -> None:
        self._begin = client.register_script(_BEGIN)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._max_per_account = max_per_account
        self._max_per_address = max_per_address
        self._window_s = window_s

    def _keys(self, username: str, address: str) -> list[str]:
        keys = [_key(ACCOUNT_PREFIX, username.lower())]
        # The gateway always passes the address; an internal caller that does not is not throttled
        # per address rather than sharing one bucket with every other such caller.
        if address:
            keys.append(_key(ADDRESS_PREFIX, address))
        return keys

    async def begin(self, username: str, address: str) -> int:
        """Count an attempt that is about to be checked. Returns 0 if it may proceed, otherwise the
        number of seconds until the caller may try again (the attempt is then not counted)."""
        keys = self._keys(username, address)
        limits = [self._max_per_account, self._max_per_address][: len(keys)]
        return int(await self._begin(keys=keys, args=[self._window_s, *limits]))

    async def succeeded(self, username: str, address: str) -> None:
        """The password was right: clear the account's failures and take back this attempt's count."""
        await self._succeeded(keys=self._keys(username, address))
