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
    """A running simulator: its URLs, its counters, and how to stop, kill or restart it."""

    def __init__(
        self, proc: subprocess.Popen[str], base_url: str, launch: tuple[tuple[str, ...], str, dict[str, str]]
    ) -> None:
        self.proc = proc
        self.base_url = base_url
        # What an OpenAI client or the inference adapter is pointed at.
        self.url = base_url + "/v1"
        # Flags, host and environment it was started with, to start it again on the same port.
        self._launch = launch

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def kill(self, after_tokens: int | None = None, timeout_s: float = 5.0) -> None:
        """The kill switch: die now (and wait for it), or once a response has sent `after_tokens` tokens."""
        query = "" if after_tokens is None else f"?after_tokens={after_tokens}"
        req = urllib.request.Request(self.base_url + "/sim/kill" + query, method="POST")  # noqa: S310 - own http URL
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310
            pass
        if after_tokens is None:
            self.proc.wait(timeout=timeout_s)

    def restart(self, timeout_s: float = 15.0) -> None:
        """Start the process again with the same flags on the same port (after a kill, or to stop it)."""
        self.close()
        args, host, env = self._launch
        fresh = start_simulator(*args, host=host, port=self.port, env=env, timeout_s=timeout_s)
        self.proc = fresh.proc

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
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 15.0,
) -> SimulatorProcess:
    """Start `python -m genai_vllmsim --port PORT ARGS...` (a free port by default); return once it answers /health."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "genai_vllmsim", "--host", host, "--port", str(port), *args],
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
    sim = SimulatorProcess(proc, line[len(READY_PREFIX) :], (args, host, dict(env or {})))
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
    One that a test has killed is started again (on a port of its own) when next asked for.
    """

    def __init__(self) -> None:
        self._running: dict[tuple[str, ...], SimulatorProcess] = {}

    def get(self, *args: str) -> SimulatorProcess:
        sim = self._running.get(args)
        if sim is not None and sim.proc.poll() is not None:
            sim.close()
            sim = None
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
