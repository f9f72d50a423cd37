"""Which replica a keyed request goes to: consistent hashing with bounded loads.

vLLM keeps the prompts it has seen in its prefix cache, so the next turn of a conversation starts much
sooner on the replica that served the last one. Consistent hashing sends a key (the conversation id)
to the same replica every time, and when a replica comes or goes only the keys on its arcs of the ring
move (about 1/n of them), not all of them as `hash % n` would. Plain consistent hashing ignores load,
though: a few long conversations on one replica would queue there while the others idle.

The bounded-load rule (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads",
SODA 2018) caps every replica at `ceil(c * (total + 1) / n)` requests, where total is the load of all
n candidates and c > 1 the slack (1.25 by default: a replica may carry a quarter more than the average).
A key goes to the first replica clockwise from its point whose load is below the cap (with whole
loads: whose load plus this request fits under it); a full one passes the key on to the next. So a
conversation stays where its cache is unless that replica is clearly busier than the rest, and then it
moves to the same next replica each time (its cache warms there). The router's loads are not whole
numbers (it adds scraped queue lengths and KV-cache use), hence "below the cap" rather than "load + 1 at
most the cap": a replica carrying a trace of load (0.06 of a request's KV cache) would otherwise miss a
cap of 1 at low traffic, and conversations would leave their caches exactly when nothing is busy. The
cap is above the average load, so the least loaded candidate is always below it.

Cost: the ring has VNODES points per replica, built once per change of the list; a choice is a binary
search and a walk that ends at the first replica that fits (at most all points, usually a handful).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping

# Points per replica: enough for each replica's share of keys to be within a few percent of 1/n.
VNODES = 160


def _point(text: str) -> int:
    # Stable across processes and restarts (Python's hash() is salted per process): two adapters, or one
    # restarted, map a conversation to the same replica.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Replica names placed on a ring of 64-bit points, VNODES points each."""

    def __init__(self, names: Iterable[str], vnodes: int = VNODES) -> None:
        pairs = sorted((_point(f"{name}#{i}"), name) for name in set(names) for i in range(vnodes))
        self._points = [p for p, _ in pairs]
        self._names = [n for _, n in pairs]
        self.size = len(set(self._names))

    def walk(self, key: str) -> Iterator[str]:
        """Every replica once, clockwise from the key's point: the key's own replica first."""
        if not self._points:
            return
        start = bisect.bisect(self._points, _point(key))
        seen: set[str] = set()
        count = len(self._points)
        for i in range(count):
            name = self._names[(start + i) % count]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == self.size:
                    return


def bounded_choice(
    ring: HashRing, key: str, loads: Mapping[str, float], load_factor: float
) -> tuple[str, bool]:
    """The replica for `key` among the candidates in `loads` (name -> requests it carries now).

    Returns the name, and whether it is the key's own replica (the first on the ring) rather than a later
    one because its own was too busy or is not a candidate now. Candidates missing from the ring (just added) are
    only chosen when no candidate on the ring is, as the least loaded.
    """
    if not loads:
        raise ValueError("no candidates")
    cap = math.ceil(load_factor * (sum(loads.values()) + 1) / len(loads))
    first = True
    for name in ring.walk(key):
        load = loads.get(name)
        # Not a candidate now (out of rotation, or not serving the model): the key moves on as well.
        if load is not None and load < cap:
            return name, first
        first = False
    return min(loads, key=lambda name: loads[name]), False
