"""Answers kept in Redis, keyed by everything that shapes an answer: model, messages, generation parameters."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


@dataclass
class CachedAnswer:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    material = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return "cache:v1:" + hashlib.sha256(material.encode()).hexdigest()


class AnswerCache:
    """Exact-match cache. Redis trouble is a miss, never an error for the caller."""

    def __init__(self, client: redis.Redis, ttl_s: int, enabled: bool = True) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.enabled = enabled

    async def get(self, key: str) -> CachedAnswer | None:
        if not self.enabled:
            return None
        try:
            raw = await self.client.get(key)
        except RedisError as exc:
            logger.warning("cache unavailable on read: %s", exc)
            return None
        if raw is None:
            return None
        try:
            return CachedAnswer(**json.loads(raw))
        except (ValueError, TypeError):
            logger.warning("dropping unreadable cache entry %s", key)
            return None

    async def put(self, key: str, answer: CachedAnswer) -> None:
        if not self.enabled:
            return
        try:
            await self.client.set(key, json.dumps(asdict(answer), ensure_ascii=False), ex=self.ttl_s)
        except RedisError as exc:
            logger.warning("cache unavailable on write: %s", exc)
