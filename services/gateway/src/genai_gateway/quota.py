"""Per-user limits: requests per minute, concurrent requests, tokens per minute and tokens per day.

Each admission is one Lua script in Redis that checks every limit and records the request, so that
concurrent requests, from any number of gateway processes, can never overshoot (no check-then-increment).
A request holds a concurrency slot until it ends (answer, error, timeout or client gone); slots carry
an expiry, so those of a gateway that died free themselves. Tokens are charged with the real usage once
an answer is complete.

When Redis is unavailable the policy decides: "open" answers from a limiter in this process (same limits,
counted per process), "closed" refuses with 503.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from genai_common.redis_guard import RedisGuard
from genai_gateway.errors import ApiError

logger = logging.getLogger(__name__)

ADMITTED = Counter("genai_gateway_admitted_total", "Requests let through to the model or cache")
LIMITED = Counter(
    "genai_gateway_limited_total",
    "Requests refused by a limit: requests_per_minute, concurrent_requests, tokens_per_minute, "
    "tokens_per_day, or redis_unavailable (failure policy closed)",
    ["limit"],
)

UNLIMITED = -1
WINDOW_MS = 60_000
DAY_S = 86_400


@dataclass(frozen=True)
class LimitSet:
    """One user's limits; -1 means unlimited."""

    requests_per_minute: int = 30
    tokens_per_minute: int = UNLIMITED
    concurrent_requests: int = 8
    tokens_per_day: int = UNLIMITED

    def overlay(self, overrides: dict[str, int]) -> LimitSet:
        known = {k: int(v) for k, v in overrides.items() if k in self.__dataclass_fields__}
        return replace(self, **known)


_MESSAGES = {
    "requests_per_minute": "rate limit of {limit} requests per minute reached",
    "concurrent_requests": "too many requests at once: at most {limit} may run at the same time",
    "tokens_per_minute": "token limit of {limit} tokens per minute reached",
    "tokens_per_day": "daily token limit of {limit} tokens reached",
}
for _limit in (*_MESSAGES, "redis_unavailable"):
    LIMITED.labels(_limit)


@dataclass
class Admission:
    """A request let through: `Quotas.settle` gives its slot back and charges the tokens it cost."""

    subject: str
    limits: LimitSet
    slot: str
    remaining: int
    reset_ms: int
    local: bool = False
    released: bool = False

    def headers(self) -> dict[str, str]:
        if self.limits.requests_per_minute == UNLIMITED:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limits.requests_per_minute),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(max(1, math.ceil(self.reset_ms / 1000))),
        }


def refusal(limit_name: str, limits: LimitSet, reset_ms: int) -> ApiError:
    value = getattr(limits, limit_name)
    retry = str(max(1, math.ceil(reset_ms / 1000)))
    headers = {"Retry-After": retry}
    if limit_name == "requests_per_minute":
        headers |= {"X-RateLimit-Limit": str(value), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": retry}
    LIMITED.labels(limit_name).inc()
    return ApiError(
        429,
        _MESSAGES[limit_name].format(limit=value) + f"; retry in {retry} s",
        code="rate_limited",
        headers=headers,
    )


# KEYS: requests log, slots, token log, tokens today.  ARGV: limits (rpm, concurrent, tpm, tpd), slot id,
# slot lifetime ms, ms until the day ends.  Returns {1, remaining, reset_ms} or {0, limit name, reset_ms}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local rpm, conc, tpm, tpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if conc >= 0 and redis.call('ZCARD', KEYS[2]) >= conc then
  return {0, 'concurrent_requests', 1000}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if rpm >= 0 and count >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 'requests_per_minute', tonumber(oldest[2]) + window - now}
end
if tpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
  local used = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    used = used + tonumber(string.match(member, ':(%d+)$'))
  end
  if used >= tpm then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {0, 'tokens_per_minute', tonumber(oldest[2]) + window - now}
  end
end
if tpd >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= tpd then
  return {0, 'tokens_per_day', tonumber(ARGV[7])}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
local reset = window
if count > 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = tonumber(oldest[2]) + window - now
end
return {1, rpm - count - 1, reset}
"""

# The end of a request in one round trip: the slot given back and, when the answer cost any, its tokens
# charged (a member per answer in the minute's log, and the day's sum); with a fourth key, a record appended
# to that list too (the history journal's entry for the answer, `settle_and_append`).
# KEYS: slots, token log, tokens today[, list].  ARGV: slot id, tokens (0: nothing to charge)[, record].
_SETTLE = """
if #KEYS > 3 then redis.call('RPUSH', KEYS[4], ARGV[3]) end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now, ARGV[1] .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[2], 60000)
  redis.call('INCRBY', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], 172800)
end
return 1
"""


# A slot's id must be unique among the slots of a user in every gateway (members of one sorted set), and
# hold no ':' (the token log's members are "<slot>:<tokens>"): a random prefix per process and a counter.
# uuid4 would read the OS's random source for every request.
_SLOT_PREFIX = secrets.token_hex(8)
_slot_numbers = itertools.count()


def _new_slot() -> str:
    return f"{_SLOT_PREFIX}{next(_slot_numbers):x}"


def _day() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


def _ms_until_tomorrow() -> int:
    now = time.time()
    return int((DAY_S - now % DAY_S) * 1000)


@dataclass
class _LocalSubject:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    slots: set[str] = field(default_factory=set)
    day: str = ""
    day_tokens: int = 0


class LocalQuotas:
    """The same limits counted in this process only: the fallback while Redis is down."""

    def __init__(self) -> None:
        self._subjects: dict[str, _LocalSubject] = {}

    def admit(self, subject: str, limits: LimitSet) -> Admission | ApiError:
        state = self._subjects.setdefault(subject, _LocalSubject())
        now = time.monotonic()
        while state.requests and state.requests[0] <= now - 60:
            state.requests.popleft()
        while state.tokens and state.tokens[0][0] <= now - 60:
            state.tokens.popleft()
        if state.day != _day():
            state.day, state.day_tokens = _day(), 0
        if limits.concurrent_requests >= 0 and len(state.slots) >= limits.concurrent_requests:
            return refusal("concurrent_requests", limits, 1000)
        if limits.requests_per_minute >= 0 and len(state.requests) >= limits.requests_per_minute:
            return refusal("requests_per_minute", limits, int((state.requests[0] + 60 - now) * 1000))
        if limits.tokens_per_minute >= 0 and sum(n for _, n in state.tokens) >= limits.tokens_per_minute:
            return refusal("tokens_per_minute", limits, int((state.tokens[0][0] + 60 - now) * 1000))
        if limits.tokens_per_day >= 0 and state.day_tokens >= limits.tokens_per_day:
            return refusal("tokens_per_day", limits, _ms_until_tomorrow())
        slot = _new_slot()
        state.requests.append(now)
        state.slots.add(slot)
        remaining = limits.requests_per_minute - len(state.requests)
        return Admission(
            subject, limits, slot, remaining, int((state.requests[0] + 60 - now) * 1000), local=True
        )

    def release(self, admission: Admission) -> None:
        state = self._subjects.get(admission.subject)
        if state:
            state.slots.discard(admission.slot)

    def charge(self, admission: Admission, tokens: int) -> None:
        if tokens <= 0:
            return
        state = self._subjects.setdefault(admission.subject, _LocalSubject())
        state.tokens.append((time.monotonic(), tokens))
        if state.day != _day():
            state.day, state.day_tokens = _day(), 0
        state.day_tokens += tokens


class Quotas:
    def __init__(
        self,
        client: redis.Redis,
        guard: RedisGuard,
        role_limits: dict[str, LimitSet],
        *,
        slot_ttl_s: float,
        failure_policy: Literal["open", "closed"] = "open",
        prefix: str = "quota",
    ) -> None:
        self.client = client
        self.guard = guard
        self.role_limits = role_limits
        self.slot_ttl_ms = int(slot_ttl_s * 1000)
        self.failure_policy = failure_policy
        self.prefix = prefix
        self.local = LocalQuotas()
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)
        self._overrides: dict[str, dict[str, int]] = {}

    def limits_for(self, role: str, overrides_json: str = "") -> LimitSet:
        base = self.role_limits.get(role) or self.role_limits.get("user") or LimitSet()
        if not overrides_json or overrides_json == "{}":
            return base
        overrides = self._overrides.get(overrides_json)
        if overrides is None:
            try:
                parsed = json.loads(overrides_json)
                overrides = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                logger.warning("ignoring unreadable limit overrides")
                overrides = {}
            if len(self._overrides) > 10_000:
                self._overrides.clear()
            self._overrides[overrides_json] = overrides
        return base.overlay(overrides)

    def _keys(self, subject: str) -> list[str]:
        base = f"{self.prefix}:{subject}"
        return [f"{base}:req", f"{base}:slots", f"{base}:tok", f"{base}:day:{_day()}"]

    async def admit(self, subject: str, limits: LimitSet) -> Admission:
        """Let one request through or raise 429 (or 503 when Redis is down and the policy is closed)."""
        if self.guard.available:
            slot = _new_slot()
            try:
                result = await self._admit(
                    keys=self._keys(subject),
                    args=[
                        limits.requests_per_minute,
                        limits.concurrent_requests,
                        limits.tokens_per_minute,
                        limits.tokens_per_day,
                        slot,
                        self.slot_ttl_ms,
                        _ms_until_tomorrow(),
                    ],
                )
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
            else:
                self.guard.succeeded()
                if not int(result[0]):
                    name = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
                    raise refusal(name, limits, int(result[2]))
                ADMITTED.inc()
                return Admission(subject, limits, slot, int(result[1]), int(result[2]))
        if self.failure_policy == "closed":
            LIMITED.labels("redis_unavailable").inc()
            raise ApiError(
                503, "limits cannot be checked right now (Redis is unavailable); try again shortly"
            )
        outcome = self.local.admit(subject, limits)
        if isinstance(outcome, ApiError):
            raise outcome
        ADMITTED.inc()
        return outcome

    async def settle(self, admission: Admission, tokens: int) -> None:
        """Charge what the answer cost (0: nothing) and give the slot back, in one Redis round trip.

        Once per admission: a second call does nothing.
        """
        if admission.released:
            return
        admission.released = True
        if admission.local:
            self.local.charge(admission, tokens)
            self.local.release(admission)
            return
        if self.guard.available:
            keys = self._keys(admission.subject)
            try:
                await self._settle(keys=keys[1:], args=[admission.slot, max(0, tokens)])
                return
            except (RedisError, OSError) as exc:
                self.guard.failed(exc)
        # Redis is away: the slot's expiry frees it, and the tokens are counted here meanwhile.
        self.local.charge(admission, tokens)

    async def settle_and_append(self, admission: Admission, tokens: int, key: str, record: bytes) -> None:
        """`settle`, and append `record` to the list `key` (the history journal) in the same round trip.

        The request is settled however this ends; a Redis error is raised when the record was not appended,
        so that the caller keeps it another way.
        """
        if admission.released or admission.local:
            await self.settle(admission, tokens)
            await self.client.rpush(key, record)
            return
        admission.released = True
        keys = self._keys(admission.subject)
        try:
            await self._settle(keys=[*keys[1:], key], args=[admission.slot, max(0, tokens), record])
        except ResponseError:
            # The record comes first in the script, so that a full Redis refuses it (it would grow the journal
            # past Redis's memory); the request is then settled alone, which a full Redis still runs.
            admission.released = False
            await self.settle(admission, tokens)
            raise
        except (RedisError, OSError):
            self.local.charge(admission, tokens)
            raise

    async def admit_read(
        self, kind: str, user_id: str, per_minute: int, at_once: int = UNLIMITED
    ) -> Admission:
        """Count an expensive read (an export, a search) against the caller's limits for that kind; 429 names
        the kind. Settle it like a request, with no tokens."""
        limits = LimitSet(
            requests_per_minute=per_minute,
            concurrent_requests=at_once,
            tokens_per_minute=UNLIMITED,
            tokens_per_day=UNLIMITED,
        )
        try:
            return await self.admit(f"{kind}:{user_id}", limits)
        except ApiError as exc:
            if exc.status != 429:
                raise
            raise ApiError(429, f"{kind}: {exc.message}", code=exc.code, headers=exc.headers) from None

    async def in_use(self, subject: str) -> int:
        """Slots held right now (for tests and the admin view)."""
        return int(await self.client.zcount(self._keys(subject)[1], f"({int(time.time() * 1000)}", "+inf"))
