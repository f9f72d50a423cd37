"""The circuit breaker of a replica: closed, open for a cool-down, then one trial request decides."""

from __future__ import annotations

import pytest

from genai_adapter.breaker import Breaker, BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_in_a_row_open_it_and_a_success_between_them_resets_the_count() -> None:
    clock = Clock()
    breaker = Breaker(3, 2.0, clock)
    for _ in range(2):
        breaker.acquire()
        breaker.failure()
    breaker.acquire()
    breaker.success()
    for _ in range(2):
        breaker.acquire()
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.available()
    breaker.acquire()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.available()
    # Requests sent before it opened fail too: the cool-down is not restarted by them.
    clock.now += 1.5
    breaker.failure()
    clock.now += 0.5
    assert breaker.state is BreakerState.HALF_OPEN


def test_one_trial_after_the_cool_down_decides() -> None:
    clock = Clock()
    breaker = Breaker(1, 2.0, clock)
    breaker.acquire()
    breaker.failure()
    clock.now += 2.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
    assert breaker.acquire() is True  # the trial
    assert not breaker.available()  # the others still skip it meanwhile
    assert breaker.acquire() is False  # sent anyway (nothing else to try): not a second trial
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 2.0
    assert breaker.acquire() is True
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.available()


def test_a_trial_without_a_verdict_lets_the_next_request_be_the_trial() -> None:
    clock = Clock()
    breaker = Breaker(1, 1.0, clock)
    breaker.acquire()
    breaker.failure()
    clock.now += 1.0
    assert breaker.acquire() is True
    # Refused as invalid, or abandoned by its caller: says nothing about the replica.
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.available()
    assert breaker.acquire() is True


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="failures >= 1"):
        Breaker(0, 1.0)
    with pytest.raises(ValueError, match="cooldown_s > 0"):
        Breaker(1, 0.0)
