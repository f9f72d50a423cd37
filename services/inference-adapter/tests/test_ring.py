"""Consistent hashing with bounded loads: a key keeps its replica, moves little when the list changes, and
moves on (always to the same next one) when its replica is clearly the busiest."""

from __future__ import annotations

from collections import Counter

import pytest

from genai_adapter.ring import HashRing, bounded_choice

NAMES = ["http://a:8000/v1", "http://b:8000/v1", "http://c:8000/v1"]
KEYS = [f"conversation-{i}" for i in range(6000)]


def owners(ring: HashRing) -> dict[str, str]:
    return {key: next(ring.walk(key)) for key in KEYS}


def test_walk_names_every_replica_once_and_does_not_depend_on_the_order_given() -> None:
    ring = HashRing(NAMES)
    again = HashRing(list(reversed(NAMES)))
    for key in KEYS[:200]:
        walk = list(ring.walk(key))
        assert sorted(walk) == sorted(NAMES)
        # Another process (a second adapter, this one restarted) sends a key to the same replica.
        assert list(again.walk(key)) == walk
    assert list(HashRing([]).walk("anything")) == []


def test_keys_spread_evenly_and_a_new_replica_takes_only_its_share() -> None:
    before = owners(HashRing(NAMES))
    shares = Counter(before.values())
    for name in NAMES:
        assert abs(shares[name] / len(KEYS) - 1 / 3) < 0.06, shares
    after = owners(HashRing([*NAMES, "http://d:8000/v1"]))
    moved = [key for key in KEYS if before[key] != after[key]]
    # Only keys the new replica took moved (about a quarter), none between the old ones.
    assert all(after[key] == "http://d:8000/v1" for key in moved)
    assert 0.18 < len(moved) / len(KEYS) < 0.32
    # A replica that leaves gives back only its own keys.
    without_b = owners(HashRing([NAMES[0], NAMES[2]]))
    assert all(without_b[key] == before[key] for key in KEYS if before[key] != NAMES[1])


def test_a_key_stays_on_its_replica_while_it_is_not_clearly_the_busiest() -> None:
    ring = HashRing(NAMES)
    key = KEYS[0]
    own, second = list(ring.walk(key))[:2]
    idle = dict.fromkeys(NAMES, 0.0)
    assert bounded_choice(ring, key, idle, 1.25) == (own, True)
    # Somewhat busier than the rest: within the slack, the key stays.
    assert bounded_choice(ring, key, {**dict.fromkeys(NAMES, 4.0), own: 5.0}, 1.25) == (own, True)
    # Clearly the busiest: the key moves on, to the next replica on its walk every time.
    busy = {**dict.fromkeys(NAMES, 2.0), own: 12.0}
    assert bounded_choice(ring, key, busy, 1.25) == (second, False)
    # With no slack at all (load factor 1) the same small excess already moves it.
    assert bounded_choice(ring, key, {**dict.fromkeys(NAMES, 4.0), own: 5.0}, 1.0)[1] is False


def test_only_candidates_are_chosen() -> None:
    ring = HashRing(NAMES)
    key = KEYS[1]
    own = next(ring.walk(key))
    others = {name: 0.0 for name in NAMES if name != own}
    name, kept = bounded_choice(ring, key, others, 1.25)
    assert name in others and kept is False
    # A candidate the ring does not know yet (just added) is only the least loaded fallback.
    fresh = {"http://new:8000/v1": 0.0}
    assert bounded_choice(ring, key, fresh, 1.25) == ("http://new:8000/v1", False)
    with pytest.raises(ValueError, match="no candidates"):
        bounded_choice(ring, key, {}, 1.25)


def test_a_trace_of_load_does_not_move_a_key_when_nothing_is_busy() -> None:
    ring = HashRing(NAMES)
    key = KEYS[2]
    own = next(ring.walk(key))
    # Scraped KV-cache use makes loads that are not whole numbers: cap ceil(1.25 * 1.06 / 3) = 1.
    assert bounded_choice(ring, key, {**dict.fromkeys(NAMES, 0.0), own: 0.06}, 1.25) == (own, True)
    # At the cap it is full: with c = 1 and loads (2, 1.5, 1.5), cap ceil(6 / 3) = 2.
    loads = {**dict.fromkeys(NAMES, 1.5), own: 2.0}
    assert bounded_choice(ring, key, loads, 1.0) == (list(ring.walk(key))[1], False)
