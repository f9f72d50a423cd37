"""Start the simulator in a child process on a free port, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from genai_vllmsim.__main__ import READY_PREFIX


class SimulatorProcess:
    """A running simulator: its URLs, its counters, and how to stop it."""

    def __init__(self, proc: subprocess.Popen[str], base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url
        # What an OpenAI client or the inference adapter is pointed at.
        self.url = base_url + "/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base_url + "/sim/stats", timeout=5) as resp:  # noqa: S310 - own http URL
            return json.loads(resp.read())

    def reset(self) -> None:
        req = urllib.request.Request(self.base_url + "/sim/reset", method="POST")  # noqa: S310 - own http URL
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310
            pass

    def close(self) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()


def start_simulator(
    *args: str, host: str = "127.0.0.1", env: Mapping[str, str] | None = None, timeout_s: float = 15.0
) -> SimulatorProcess:
    """Start `python -m genai_vllmsim --port 0 ARGS...` and return once it answers /health."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genai_vllmsim", "--host", host, "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    first_line: list[str] = []
    reader = threading.Thread(target=lambda: first_line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout_s)
    line = first_line[0].strip() if first_line else ""
    if not line.startswith(READY_PREFIX):
        proc.kill()
        proc.wait(timeout=5)
        raise RuntimeError(f"simulator did not start (exit code {proc.poll()}): {line!r}")
    # Keep draining stdout so that the child can never block on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    sim = SimulatorProcess(proc, line[len(READY_PREFIX) :])
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(sim.base_url + "/health", timeout=1) as resp:  # noqa: S310 - own http URL
                if resp.status == 200:
                    return sim
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                sim.close()
                raise RuntimeError("simulator did not become healthy") from None
            time.sleep(0.05)


@contextmanager
def running_simulator(*args: str, **kwargs: Any) -> Iterator[SimulatorProcess]:
    sim = start_simulator(*args, **kwargs)
    try:
        yield sim
    finally:
        sim.close()


class SimulatorPool:
    """One simulator per distinct set of flags, started on first use and reset on every later use.

    Test sessions keep one pool so that each configuration starts once, however many tests use it.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], SimulatorProcess] = {}

    def get(self, *args: str) -> SimulatorProcess:
        sim = self._running.get(args)
        if sim is None:
            sim = self._running[args] = start_simulator(*args)
        else:
            sim.reset()
        return sim

    def close(self) -> None:
        # Signal all first, so that their graceful shutdowns overlap.
        for sim in self._running.values():
            sim.terminate()
        for sim in self._running.values():
            sim.close()
        self._running.clear()
