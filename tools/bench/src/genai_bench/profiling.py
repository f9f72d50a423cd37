"""Sampling profiles of the services under load (py-spy), summed up for the report.

py-spy attaches to running processes (no change to them) and writes collapsed stacks ("a;b;c 42").
Idle samples are left out, so the shares are of the CPU time a process actually used.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from genai_bench import venvs

_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Where a sample's innermost Python frame is decides its bucket; first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gRPC (grpc.aio)", ("grpc/", "grpc\\", "_cython/")),
    ("protobuf", ("google/protobuf",)),
    ("pydantic", ("pydantic",)),
    ("FastAPI / Starlette", ("fastapi/", "starlette/")),
    ("uvicorn / httptools", ("uvicorn/", "httptools")),
    ("Redis client", ("redis/",)),
    ("httpx / httpcore", ("httpx/", "httpcore/", "h11/")),
    ("asyncpg", ("asyncpg/",)),
    ("logging", ("logging/",)),
    ("json", ("json/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("event loop (asyncio, uvloop, sockets)", ("asyncio/", "uvloop/", "anyio/", "selectors.py", "socket.py")),
    # Threads that run native code only: gRPC's completion-queue poller, executors.
    ("native threads (gRPC poller)", ("threading.py",)),
    ("TLS / ssl", ("ssl.py",)),
    ("project code (genai_*)", ("genai_",)),
)


def py_spy(work_dir: Path) -> Path:
    return venvs.ensure(work_dir / "tools-venv", venvs.requirements("tools-requirements.txt"), "py-spy")


def record(exe: Path, pid: int, seconds: int, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `out` (collapsed stacks); wait on the returned process."""
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            # Reads the process's memory without stopping it, so the profile barely slows what it measures.
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def parse_collapsed(text: str) -> Counter[tuple[str, ...]]:
    """Collapsed stacks ("outer;...;inner COUNT" per line) as stack -> samples."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def function(frame: str) -> str:
    """A frame without its line number ("name (file)"), with the file shortened to its package path."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3":
                file = file.split("/", 1)[-1]
            break
    return f"{match.group('name')} ({file})"


def category(frame: str) -> str:
    match = _FRAME.match(frame)
    file = match.group("file") if match else frame
    for name, markers in CATEGORIES:
        if any(marker in file for marker in markers):
            return name
    return "other"


@dataclass
class Profile:
    """One process's profile: total samples, and where they went."""

    name: str
    samples: int
    seconds: float
    rate: int
    by_category: list[tuple[str, int]]
    top_self: list[tuple[str, int]]
    top_project: list[tuple[str, int]]

    @property
    def cpu_share(self) -> float:
        """Busy samples over all possible samples: the share of one core the process used."""
        possible = self.seconds * self.rate
        return self.samples / possible if possible else 0.0


def summarize(
    name: str, stacks: Counter[tuple[str, ...]], seconds: float, rate: int, top: int = 12
) -> Profile:
    total = sum(stacks.values())
    by_category: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    project: Counter[str] = Counter()
    for frames, count in stacks.items():
        # py-spy puts the thread or process name first when asked; real frames have "(file:line)".
        real = [f for f in frames if _FRAME.match(f)]
        if not real:
            continue
        by_category[category(real[-1])] += count
        leaf[function(real[-1])] += count
        # Inclusive time of the project's own functions: each counted once per sample.
        for fn in {function(f) for f in real if "genai_" in f and not f.startswith(("<module>", "main "))}:
            project[fn] += count
    return Profile(
        name=name,
        samples=total,
        seconds=seconds,
        rate=rate,
        by_category=by_category.most_common(),
        top_self=leaf.most_common(top),
        top_project=project.most_common(top),
    )
