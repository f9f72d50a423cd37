"""When a cached Authenticate answer may be used again, and when it must not (the rules alone; the feed
itself and its gateways are exercised against the real services in tests/test_credential_cache.py)."""

from __future__ import annotations

from genai.auth.v1 import auth_pb2

from genai_gateway.credentials import SILENT_HEARTBEATS, CredentialCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _principal(user: str = "u1", jti: str = "t1", expires_at: int = 0) -> auth_pb2.Principal:
    return auth_pb2.Principal(user_id=user, username=user, role="user", token_id=jti, expires_at=expires_at)


def _tick(cache: CredentialCache, clock: Clock, seconds: float) -> None:
    """Time passing with the feed's heartbeat heard every second, as when all is well."""
    while seconds > 0:
        step = min(1.0, seconds)
        clock.now += step
        seconds -= step
        cache.heard(auth_pb2.CredentialChanges(heartbeat_ms=1000))


def _cache(ttl_s: float = 10, max_entries: int = 100) -> tuple[CredentialCache, Clock, Clock]:
    clock, wall = Clock(), Clock()
    wall.now = 2_000_000_000.0
    cache = CredentialCache(ttl_s, max_entries, clock=clock, wall_clock=wall)
    cache.heard(auth_pb2.CredentialChanges(heartbeat_ms=1000))
    return cache, clock, wall


def test_an_answer_is_used_again_within_its_ttl() -> None:
    cache, clock, _ = _cache(ttl_s=10)
    cache.put("tok", _principal(), cache.generation)
    assert cache.get("tok") == _principal()
    assert cache.get("other") is None
    _tick(cache, clock, 9.9)
    assert cache.get("tok") is not None
    _tick(cache, clock, 0.2)
    assert cache.get("tok") is None


def test_never_past_the_credentials_own_expiry() -> None:
    cache, _, wall = _cache()
    cache.put("tok", _principal(expires_at=int(wall.now) + 2), cache.generation)
    assert cache.get("tok") is not None
    wall.now += 2
    assert cache.get("tok") is None


def test_changes_forget_the_credentials_they_name() -> None:
    cache, _, _ = _cache()
    cache.put("a", _principal("u1", "t1"), cache.generation)
    cache.put("b", _principal("u1", "t2"), cache.generation)
    cache.put("c", _principal("u2", "t3"), cache.generation)
    cache.heard(auth_pb2.CredentialChanges(token_ids=["t3"]))
    assert cache.get("c") is None and cache.get("a") is not None
    cache.heard(auth_pb2.CredentialChanges(user_ids=["u1"]))
    assert cache.get("a") is None and cache.get("b") is None


def test_a_sessions_end_forgets_every_token_of_that_session() -> None:
    # A logout names the session's chain: an access token renewed earlier in the same session (another
    # tab's) goes too, while another session of the same user stays.
    cache, _, _ = _cache()
    cache.put("old", auth_pb2.Principal(user_id="u1", token_id="t1", session_id="s1"), cache.generation)
    cache.put("new", auth_pb2.Principal(user_id="u1", token_id="t2", session_id="s1"), cache.generation)
    cache.put("phone", auth_pb2.Principal(user_id="u1", token_id="t3", session_id="s2"), cache.generation)
    cache.heard(auth_pb2.CredentialChanges(token_ids=["s1"]))
    assert cache.get("old") is None and cache.get("new") is None and cache.get("phone") is not None
    # Nor is an answer about that session kept while its end may not have reached auth's Redis copy yet.
    cache.put("old", auth_pb2.Principal(user_id="u1", token_id="t1", session_id="s1"), cache.generation)
    assert cache.get("old") is None


def test_credentials_named_lately_are_not_cached_again_for_a_while() -> None:
    # A logout is announced as PostgreSQL commits it, a moment before auth's Redis copy has it: an answer
    # from that moment may say "valid", so answers about that token are not kept for a TTL.
    cache, clock, _ = _cache(ttl_s=10)
    cache.heard(auth_pb2.CredentialChanges(token_ids=["t1"]))
    cache.heard(auth_pb2.CredentialChanges(user_ids=["u2"]))
    cache.put("a", _principal("u1", "t1"), cache.generation)
    cache.put("b", _principal("u2", "t9"), cache.generation)
    cache.put("c", _principal("u3", "t3"), cache.generation)
    assert cache.get("a") is None and cache.get("b") is None and cache.get("c") is not None
    _tick(cache, clock, 10)
    cache.put("a", _principal("u1", "t1"), cache.generation)
    assert cache.get("a") is not None


def test_an_answer_that_names_no_credential_id_is_not_cached() -> None:
    cache, _, _ = _cache()
    cache.put("tok", _principal(jti=""), cache.generation)
    assert cache.get("tok") is None


def test_emptied_tables_forget_everything() -> None:
    cache, _, _ = _cache()
    cache.put("a", _principal("u1", "t1"), cache.generation)
    cache.heard(auth_pb2.CredentialChanges(all_credentials=True))
    assert len(cache) == 0


def test_an_answer_asked_for_before_a_change_is_not_kept() -> None:
    cache, _, _ = _cache()
    asked_at = cache.generation
    # The change arrives while the Authenticate call is on its way: its answer may predate the change.
    cache.heard(auth_pb2.CredentialChanges(user_ids=["somebody"]))
    cache.put("tok", _principal(), asked_at)
    assert cache.get("tok") is None
    cache.put("tok", _principal(), cache.generation)
    assert cache.get("tok") is not None


def test_nothing_is_trusted_while_the_feed_is_silent_or_lost() -> None:
    cache, clock, _ = _cache()
    cache.put("tok", _principal(), cache.generation)
    clock.now += SILENT_HEARTBEATS * 1.0
    assert not cache.trusted and cache.get("tok") is None
    # Heard again: what was cached, and what was asked for, before then may predate a change it missed.
    asked_at = cache.generation
    cache.heard(auth_pb2.CredentialChanges(heartbeat_ms=1000))
    assert cache.trusted and len(cache) == 0
    cache.put("tok", _principal(), asked_at)
    assert len(cache) == 0
    # A broken stream: everything goes, and nothing is kept until it is heard.
    cache.put("tok", _principal(), cache.generation)
    assert len(cache) == 1
    cache.lost()
    assert len(cache) == 0 and not cache.trusted
    cache.put("tok", _principal(), cache.generation)
    assert len(cache) == 0


def test_never_trusted_before_the_feed_is_heard() -> None:
    cache = CredentialCache(10)
    cache.put("tok", _principal(), cache.generation)
    assert cache.get("tok") is None and len(cache) == 0
    assert cache.state.startswith("off")
    cache.heard(auth_pb2.CredentialChanges(heartbeat_ms=1000))
    assert cache.state == "on"
    assert CredentialCache(0).state == "disabled"


def test_a_ttl_of_zero_caches_nothing() -> None:
    cache, _, _ = _cache(ttl_s=0)
    assert not cache.enabled
    cache.put("tok", _principal(), cache.generation)
    assert cache.get("tok") is None


def test_a_full_cache_makes_room() -> None:
    cache, clock, _ = _cache(ttl_s=10, max_entries=8)
    for n in range(8):
        cache.put(f"old{n}", _principal(f"u{n}"), cache.generation)
    _tick(cache, clock, 5)
    cache.put("new", _principal("new"), cache.generation)
    assert len(cache) <= 8
    assert cache.get("new") is not None
    # The oldest went first.
    assert cache.get("old0") is None and cache.get("old7") is not None
