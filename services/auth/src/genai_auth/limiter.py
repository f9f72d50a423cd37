"""Throttling of failed logins per account *and* client address, with growing delays, counted atomically
in Redis; and per client address across accounts.

Why per account and address, not per account alone: a limit on the account alone lets anyone who knows a
username lock its owner out by failing on purpose from anywhere. Keyed by the pair, a guesser at one
address meets growing delays (1, 2, 4 ... seconds, up to `backoff_max_s`, after `max_per_account`
failures) while the owner, from their own address, still signs in. What that leaves open, a guesser
spread over many addresses, is bounded by the per-address limit at each of them and by the cost of
argon2 per guess; it shows in the logs as failed logins of one account from many addresses.

While Redis is unreachable the same limits are counted per process instead (never lifted), over a fixed
window without the growing delay: with several auth replicas a guesser then gets up to the limit from
each of them, and counts made in Redis before the outage or in memory during it do not carry over to the
other side.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as redis

from genai_common.redis_guard import REDIS_ERRORS, RedisGuard

logger = logging.getLogger(__name__)

ACCOUNT_PREFIX = "auth:login-failures:account:"
LOCK_PREFIX = "auth:login-lock:account:"
ADDRESS_PREFIX = "auth:login-failures:address:"

# Every attempt is counted when it starts, in the same script that checks the limit: checking first
# and counting after the (slow) password check would let a burst of parallel guesses all pass the
# check. A successful attempt takes its count back afterwards (see _SUCCEEDED).
# KEYS[1]: the failures of this account from this address; KEYS[2]: its lock (a key whose TTL is the
# delay); KEYS[3] (optional): the failures from this address across accounts.
# ARGV: window in seconds, max per account, the longest delay, max per address.
# Returns 0 when the attempt may go ahead, otherwise the seconds until it may be retried.
_BEGIN = """
local window = tonumber(ARGV[1])
local locked = redis.call('TTL', KEYS[2])
if locked > 0 then return locked end
if KEYS[3] then
  if tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[4]) then
    local ttl = redis.call('TTL', KEYS[3])
    if ttl < 0 then
      redis.call('EXPIRE', KEYS[3], window)
      ttl = window
    end
    return ttl
  end
  redis.call('INCR', KEYS[3])
  if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], window) end
end
local count = redis.call('INCR', KEYS[1])
-- Kept while the guessing goes on, so that the delay keeps growing.
redis.call('EXPIRE', KEYS[1], math.max(window, tonumber(ARGV[3]) * 2))
local over = count - tonumber(ARGV[2])
if over >= 0 then
  local delay = math.min(tonumber(ARGV[3]), 2 ^ math.min(over, 30))
  redis.call('SET', KEYS[2], '1', 'EX', math.max(1, math.floor(delay)))
end
return 0
"""

# KEYS[1], KEYS[2]: the pair's counter and lock, removed; KEYS[3] (optional): the address counter, given
# back one attempt.
_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
if KEYS[3] and tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then
  if redis.call('DECR', KEYS[3]) <= 0 then redis.call('DEL', KEYS[3]) end
end
return 0
"""


def _key(prefix: str, value: str) -> str:
    # Hashed: usernames and addresses come from callers, so their length and bytes are not ours to trust.
    return prefix + hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Attempt:
    """A login attempt as counted by `LoginLimiter.begin`: 0 or the seconds to wait before retrying,
    and whether it was counted in this process's memory (Redis unreachable) rather than in Redis."""

    wait: int
    local: bool = False


class LocalCounters:
    """The Redis scripts' rules over a dict: a fixed window per counter from its first count, and an
    attempt that is refused is not counted. For one process only, during a Redis outage."""

    def __init__(self, window_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, end of its window)
        self._next_prune = 0.0

    def _live(self, key: str, now: float) -> tuple[int, float]:
        count, until = self._counts.get(key, (0, 0.0))
        return (count, until) if until > now else (0, 0.0)

    def _prune(self, now: float) -> None:
        # Bounds the memory by the attempts of the last window or two (each one costs an argon2 hash).
        if now >= self._next_prune:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._next_prune = now + self._window_s

    def begin(self, keys: list[str], limits: list[int]) -> int:
        now = self._clock()
        self._prune(now)
        wait = 0
        for key, limit in zip(keys, limits, strict=True):
            count, until = self._live(key, now)
            if count >= limit:
                wait = max(wait, math.ceil(until - now))
        if wait:
            return wait
        for key in keys:
            count, until = self._live(key, now)
            self._counts[key] = (count + 1, until or now + self._window_s)
        return 0

    def succeeded(self, keys: list[str]) -> None:
        self._counts.pop(keys[0], None)
        if len(keys) > 1:
            count, until = self._live(keys[1], self._clock())
            if count > 1:
                self._counts[keys[1]] = (count - 1, until)
            else:
                self._counts.pop(keys[1], None)


class LoginLimiter:
    """After `max_per_account` failed logins of one account from one client address, growing delays for
    that pair (1 s, doubling, at most `backoff_max_s`); at most `max_per_address` failed logins per client
    address within a fixed window of `window_s` seconds, which starts at the first failure.

    Counted in Redis, shared by every replica; in this process's memory while Redis is unreachable.
    """

    def __init__(
        self,
        client: redis.Redis,
        guard: RedisGuard,
        *,
        max_per_account: int,
        max_per_address: int,
        window_s: int,
        backoff_max_s: int = 900,
    ) -> None:
        self._begin = client.register_script(_BEGIN)
        self._succeeded = client.register_script(_SUCCEEDED)
        self._guard = guard
        self._max_per_account = max_per_account
        self._max_per_address = max_per_address
        self._window_s = window_s
        self._backoff_max_s = backoff_max_s
        self.local = LocalCounters(window_s)

    def _keys(self, username: str, address: str) -> list[str]:
        pair = f"{username.lower()}\x00{address}"
        keys = [_key(ACCOUNT_PREFIX, pair), _key(LOCK_PREFIX, pair)]
        # The gateway always passes the address; an internal caller that does not is not throttled
        # per address rather than sharing one bucket with every other such caller.
        if address:
            keys.append(_key(ADDRESS_PREFIX, address))
        return keys

    async def begin(self, username: str, address: str) -> Attempt:
        """Count an attempt that is about to be checked. Its `wait` is 0 if it may proceed, otherwise the
        number of seconds until the caller may try again (the attempt is then not counted)."""
        keys = self._keys(username, address)
        if self._guard.available:
            try:
                wait = int(
                    await self._begin(
                        keys=keys,
                        args=[
                            self._window_s,
                            self._max_per_account,
                            self._backoff_max_s,
                            self._max_per_address,
                        ],
                    )
                )
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                return Attempt(wait)
        local_keys = [keys[0], *keys[2:]]
        limits = [self._max_per_account, self._max_per_address][: len(local_keys)]
        return Attempt(self.local.begin(local_keys, limits), local=True)

    async def succeeded(self, username: str, address: str, attempt: Attempt) -> None:
        """The password was right: clear the pair's failures and take back this attempt's count, where
        the attempt was counted."""
        keys = self._keys(username, address)
        if attempt.local:
            self.local.succeeded([keys[0], *keys[2:]])
            return
        # Redis gone since the attempt was counted: its count stays, which errs on the strict side.
        if not self._guard.available:
            return
        try:
            await self._succeeded(keys=keys)
        except REDIS_ERRORS as exc:
            self._guard.failed(exc)
        else:
            self._guard.succeeded()
