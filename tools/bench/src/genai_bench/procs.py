"""Memory (RSS) and CPU time of the processes under test, read from /proc.

A process counts with its descendants (nginx's workers, PostgreSQL's backends, LiteLLM's workers), so
each row of the report is one component however many processes it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def tree(pid: int, kids: Mapping[int, list[int]] | None = None) -> list[int]:
    """`pid` and all its descendants that are alive now."""
    kids = children_map() if kids is None else kids
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(kids.get(current, ()))
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split between the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # utime and stime are fields 14 and 15 of /proc/PID/stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ProcessSet:
    """Named components, each a root process and its descendants."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots = dict(roots)

    def rss(self) -> dict[str, int]:
        kids = children_map()
        return {name: sum(rss_bytes(p) for p in tree(pid, kids)) for name, pid in self.roots.items()}

    def pss(self) -> dict[str, int]:
        kids = children_map()
        return {name: sum(pss_bytes(p) for p in tree(pid, kids)) for name, pid in self.roots.items()}

    def cpu(self) -> dict[str, float]:
        kids = children_map()
        return {name: sum(cpu_seconds(p) for p in tree(pid, kids)) for name, pid in self.roots.items()}


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def mib(value: float) -> str:
    return f"{value / (1024 * 1024):.0f}"
