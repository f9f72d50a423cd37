"""Keeping a dead or hung Redis out of the request path.

After a failure, Redis is skipped for a short cool-down, so that only one request now and then pays the
(short) socket timeout while Redis is down; after the cool-down the next call tries again, and the first
success ends the outage. Nothing needs a restart.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge

logger = logging.getLogger(__name__)

REDIS_UP = Gauge("genai_gateway_redis_up", "1 while the gateway can use Redis, 0 during an outage")


class RedisGuard:
    def __init__(self, cooldown_s: float = 2.0) -> None:
        self.cooldown_s = cooldown_s
        self._down_until = 0.0
        self._down = False
        REDIS_UP.set(1)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def degraded(self) -> bool:
        """True from a failure until the next success."""
        return self._down

    def failed(self, exc: BaseException) -> None:
        if not self._down:
            logger.warning(
                "Redis unavailable (%s: %s); caching off, limits on their fallback", type(exc).__name__, exc
            )
        self._down = True
        self._down_until = time.monotonic() + self.cooldown_s
        REDIS_UP.set(0)

    def succeeded(self) -> None:
        if self._down:
            logger.warning("Redis is back")
            self._down = False
            REDIS_UP.set(1)
