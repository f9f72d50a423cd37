"""The Redis guard ends an outage even when the caller that probed Redis never reports a success."""

from __future__ import annotations

import time

from genai_common.redis_guard import RedisGuard


def test_a_silent_probe_ends_the_outage_after_a_cool_down() -> None:
    # A cool-down far longer than two calls take, even on a loaded machine.
    guard = RedisGuard(cooldown_s=0.5)
    guard.failed(ConnectionError("refused"))
    assert not guard.available and guard.degraded
    time.sleep(0.6)
    # One caller gets the probe (a spool write, say, that reports failures only) and says nothing.
    assert guard.available
    assert not guard.available  # the others keep skipping Redis meanwhile
    time.sleep(0.6)
    assert guard.available
    assert not guard.degraded
    assert guard.available  # everyone uses Redis again


def test_a_failed_probe_keeps_the_outage() -> None:
    guard = RedisGuard(cooldown_s=0.05)
    guard.failed(ConnectionError("refused"))
    time.sleep(0.06)
    assert guard.available
    guard.failed(TimeoutError("hung"))
    time.sleep(0.06)
    assert guard.available  # the next probe, not the end of the outage
    assert guard.degraded
