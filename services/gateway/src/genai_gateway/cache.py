"""Answers kept in Redis, keyed by everything that shapes an answer: model, messages, generation parameters.

Requests that differ only in whitespace share an entry, and, with the case-insensitive setting, those
that differ only in letter case ("identical or similar requests", as the seeds put it). The same question in
other words is the similar-request layer's (similar.py), which looks the answer up here by its key: meaning
alone would answer questions that were not asked, so that layer first checks every decisive detail.

The cache is best-effort: its Redis (GENAI_GATEWAY_CACHE_REDIS_URL, in production a Redis of its own that
evicts the least recently used keys when full) failing, refusing a write or losing entries costs cache misses,
never a request. It has a guard of its own (`cache_redis_guard`), so that a cache outage is never taken for an
outage of the state Redis (whose failure policy may refuse requests).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from genai_common.redis_guard import RedisGuard

logger = logging.getLogger(__name__)

PREFIX = "cache:v1:"
# `layer`: which kind of match a look-up tries: "normalized" (whitespace collapsed, and letter case too with
# the case-insensitive setting), which also finds exact repeats, and "similar" (similar.py). `result`: hit,
# miss, error (Redis failed), bypassed (cache off, Redis cooling off after a failure, or for "similar" a
# request it does not take or its model still loading).
LAYER = "normalized"
LOOKUPS = Counter(
    "genai_gateway_cache_lookups_total", "Answer cache look-ups by layer and result", ["layer", "result"]
)
# This layer's children, bound once: every look-up counts one.
_RESULTS = {result: LOOKUPS.labels(LAYER, result) for result in ("hit", "miss", "error", "bypassed")}
CACHE_REDIS_UP = Gauge(
    "genai_gateway_cache_redis_up",
    "1 while the gateway can use the Redis holding its answer cache (the state Redis unless "
    "GENAI_GATEWAY_CACHE_REDIS_URL names another), 0 during an outage",
)
CACHE_DEGRADED = (
    "answers are neither looked up in nor added to the cache until it answers again; asking goes on"
)


def cache_redis_guard(state: RedisGuard, separate: bool) -> RedisGuard:
    """The guard of the Redis holding the cache: the state Redis's own when it is the same server, otherwise
    one of its own (which leaves genai_redis_up to the state Redis). CACHE_REDIS_UP follows it either way."""
    guard = state
    if separate:
        guard = RedisGuard(state.cooldown_s, degraded_note=CACHE_DEGRADED, name="cache Redis", up=None)
    CACHE_REDIS_UP.set_function(lambda: float(not guard.degraded))
    return guard


@dataclass
class CachedAnswer:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


def normalize(text: str, case_insensitive: bool) -> str:
    collapsed = " ".join(text.split())
    return collapsed.casefold() if case_insensitive else collapsed


def cache_key(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    case_insensitive: bool = False,
    scope: str = "",
) -> str:
    material = json.dumps(
        {
            "model": model,
            # Tool calls and tool answers of a message count as they are; only its text is normalised.
            "messages": [{**m, "content": normalize(m["content"], case_insensitive)} for m in messages],
            "params": params,
            "scope": scope,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return PREFIX + hashlib.sha256(material.encode()).hexdigest()


def _count(counted: bool, result: str) -> None:
    if counted:
        _RESULTS[result].inc()


class AnswerCache:
    """Exact-match cache. Redis trouble is a miss, or an answer not stored, never an error for the caller."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int,
        enabled: bool = True,
        guard: RedisGuard | None = None,
        max_entry_chars: int = 100_000,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.enabled = enabled
        self.guard = guard or RedisGuard()
        self.max_entry_chars = max_entry_chars

    async def get(self, key: str, *, counted: bool = True) -> CachedAnswer | None:
        """The answer stored for `key`. `counted=False`: a second look within one request (the pipeline's,
        after it won a generation's lease), left out of the look-up metrics so that they count requests."""
        if not self.enabled or not self.guard.available:
            _count(counted, "bypassed")
            return None
        try:
            raw = await self.client.get(key)
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            _count(counted, "error")
            return None
        self.guard.succeeded()
        if raw is None:
            _count(counted, "miss")
            return None
        try:
            answer = CachedAnswer(**orjson.loads(raw))
        except (ValueError, TypeError):
            logger.warning("dropping unreadable cache entry %s", key)
            return None
        _count(counted, "hit")
        return answer

    def takes(self, text: str) -> bool:
        """Whether `put` would store an answer of this text now (on, Redis reachable, not too long)."""
        return self.enabled and self.guard.available and len(text) <= self.max_entry_chars

    async def put(self, key: str, answer: CachedAnswer, *, overwrite: bool = True) -> bool:
        """Store an answer; with overwrite=False only where none is stored (a regenerated answer never
        replaces the one other callers are given). True if the cache has an answer for `key` now."""
        if not self.takes(answer.text):
            return False
        try:
            await self.client.set(key, orjson.dumps(asdict(answer)), ex=self.ttl_s, nx=not overwrite)
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            return False
        return True

    async def purge(self) -> int:
        """Delete every cached answer; return how many."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=PREFIX + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(await self.client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await self.client.unlink(*batch))
        return deleted
