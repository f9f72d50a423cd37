"""The Redis guard shared by the services (genai_common.redis_guard): cool-down, one probe, recovery."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from genai_common.redis_guard import RedisGuard


def _up() -> float | None:
    return REGISTRY.get_sample_value("genai_redis_up")


def test_one_probe_per_cool_down_and_the_first_success_ends_the_outage() -> None:
    guard = RedisGuard(cooldown_s=0.2)
    assert guard.available and guard.available  # no outage: everyone uses Redis
    assert not guard.degraded and _up() == 1

    guard.failed(ConnectionError("refused"))
    assert guard.degraded and _up() == 0
    assert not guard.available  # cooling off: Redis is skipped
    time.sleep(0.25)
    assert guard.available  # one caller probes...
    assert not guard.available  # ...the others keep skipping Redis meanwhile
    guard.failed(TimeoutError("no answer"))  # the probe failed: another cool-down
    assert not guard.available
    time.sleep(0.25)
    assert guard.available
    guard.succeeded()
    assert not guard.degraded and _up() == 1
    assert guard.available and guard.available
