"""A circuit breaker per model server replica: stop sending requests to one that keeps failing.

    closed     requests flow; `failures` failed requests in a row open it
    open       no requests for `cooldown_s` (the replica is skipped, the others take its share)
    half-open  after the cool-down: one request, the trial, goes through; its success closes the
               breaker, its failure opens it for another cool-down; the others still skip it meanwhile

A failure is the replica's fault only (refused or lost connection, timeout, 5xx, a broken answer); a
request the server rightly refused (4xx) or that its caller abandoned says nothing about the replica
and ends a trial without a verdict (`release`), so that the next request becomes the trial.

The breaker is not the health check: an active probe says whether the server answers at all, the
breaker whether it serves generations. A replica whose /health says 200 but whose generations fail is
kept out by the breaker, one trial request per cool-down (which the router fails over when it fails).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    """Values of the genai_adapter_replica_breaker_state gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Breaker:
    """Counts a replica's consecutive failures and decides whether it may get the next request."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError("need failures >= 1 and cooldown_s > 0")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial = False

    @property
    def state(self) -> BreakerState:
        """Closed, open, or half-open (an open breaker whose cool-down is over is half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Whether the next request may go to this replica (in half-open: only if no trial is out)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial)

    def acquire(self) -> bool:
        """A request is sent to this replica; True if it is the half-open trial. Call exactly one of
        `success`, `failure` or `release` when it ends."""
        if self.state is BreakerState.HALF_OPEN and not self._trial:
            self._state = BreakerState.HALF_OPEN
            self._trial = True
            return True
        return False

    def success(self) -> None:
        """The replica served a request: it works, whatever the state was."""
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._trial = False

    def failure(self) -> None:
        """The replica failed a request (its own fault)."""
        self._consecutive += 1
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self._consecutive >= self.failures
        ):
            self._open()
        # Still cooling down: requests sent before it opened fail too; the cool-down stands.

    def release(self) -> None:
        """A request ended without a verdict on the replica (refused as invalid, abandoned by its caller)."""
        self._trial = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._trial = False
