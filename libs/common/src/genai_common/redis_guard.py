"""Keeping a dead or hung Redis out of the request path.

After a failure, Redis is skipped for a short cool-down, so that only one request now and then pays the
(short) socket timeout while Redis is down: once the cool-down is over, one caller probes Redis while the
others keep skipping it for another cool-down, and the first success ends the outage. Nothing needs a
restart.

A probe that reports no failure within a cool-down counts as a success: callers need not report
successes (many don't: a write, a release), only failures. That holds because every Redis call's own
timeout (0.5 s by default) is shorter than the cool-down (2 s by default): a probe that failed has said
so by then.

Usage: `if guard.available:` try Redis, then report `guard.succeeded()` or `guard.failed(exc)` for any
of `REDIS_ERRORS`; otherwise (or after a failure) take the fallback.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Gauge
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# What Redis being down or hung looks like to redis-py: refused or reset connections, socket timeouts,
# an exhausted connection pool (all RedisError) and the odd raw socket error (OSError).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)

# One per process: each service runs in its own process, and Prometheus tells them apart by job.
REDIS_UP = Gauge("genai_redis_up", "1 while this process can use Redis, 0 during an outage")


class RedisGuard:
    """Tracks whether Redis is usable and spaces out the attempts to reach it during an outage.

    `degraded_note` says what an outage means for the service; it goes into the outage warning. `name`
    says which Redis, where a process uses two (the gateway's cache Redis). `up` is the gauge that follows
    the outages (None: none; the gateway reads its cache Redis's state through `degraded` instead).
    """

    def __init__(
        self,
        cooldown_s: float = 2.0,
        *,
        degraded_note: str = "running degraded until it answers again",
        name: str = "Redis",
        up: Gauge | None = REDIS_UP,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.degraded_note = degraded_note
        self.name = name
        self._up = up
        self._down_until = 0.0
        self._down = False
        # When the current probe went out, during an outage; None when none is out.
        self._probe_at: float | None = None
        self._outages = 0
        self._set_up(1)

    def _set_up(self, value: int) -> None:
        if self._up is not None:
            self._up.set(value)

    @property
    def available(self) -> bool:
        """Whether the caller should try Redis now. During an outage, True for one caller per cool-down
        (the probe), so that a burst of requests does not pay the socket timeout all at once."""
        now = time.monotonic()
        if now < self._down_until:
            return False
        if self._down:
            if self._probe_at is not None:
                # The last probe went out a cool-down ago and reported no failure: Redis answers.
                self.succeeded()
                return True
            self._probe_at = now
            self._down_until = now + self.cooldown_s
        return True

    @property
    def degraded(self) -> bool:
        """True from a failure until the next success."""
        return self._down

    @property
    def outages(self) -> int:
        """How many outages began so far: lets a caller tell whether one began since a given moment."""
        return self._outages

    def failed(self, exc: BaseException) -> None:
        if not self._down:
            self._outages += 1
            logger.warning(
                "%s unavailable (%s: %s); %s", self.name, type(exc).__name__, exc, self.degraded_note
            )
        self._down = True
        self._probe_at = None
        self._down_until = time.monotonic() + self.cooldown_s
        self._set_up(0)

    def succeeded(self) -> None:
        if self._down:
            logger.warning("%s is back; no longer degraded", self.name)
            self._down = False
            self._down_until = 0.0
            self._probe_at = None
            self._set_up(1)
