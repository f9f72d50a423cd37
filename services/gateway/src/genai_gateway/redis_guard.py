"""Moved to genai_common.redis_guard (auth uses it too); kept so that old imports keep working."""

from genai_common.redis_guard import REDIS_UP, RedisGuard

__all__ = ["REDIS_UP", "RedisGuard"]
