from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from genai_vllmsim.launcher import SimulatorPool, SimulatorProcess


@pytest.fixture(scope="session")
def simulators() -> Iterator[Callable[..., SimulatorProcess]]:
    """simulators(*flags): a running simulator with those flags and zeroed counters."""
    pool = SimulatorPool()
    yield pool.get
    pool.close()


@pytest.fixture
def sim(simulators: Callable[..., SimulatorProcess]) -> SimulatorProcess:
    return simulators("--output-tokens", "8")
