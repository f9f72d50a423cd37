"""Redis' memory limit through the real stack (issue 21, part 4): the answer cache may be evicted, the state
never is.

The state (limit counters, revoked tokens, the history spool) lives in a Redis with `noeviction`; the
answer cache in one of its own with `allkeys-lru` (GENAI_GATEWAY_CACHE_REDIS_URL), as in deploy/ and
`make run`. Real redis-server processes, started and stopped here:

- a cache Redis with a tiny memory limit, filled many times over with distinct answered requests (history
  down meanwhile, so every answer is spooled in the state Redis too): the cache evicts and still answers;
  the limit counters, the revocations and every spooled answer are all still there, a user at their daily
  token limit is still refused, and every answer reaches history once it is back;
- the same churn on one shared Redis with `allkeys-lru`: the same checks find state lost (the idle user's
  day counter goes first, and with it their limit). That is the configuration the split forbids, and the
  demonstration that the checks above can fail;
- the state Redis at its own limit: it refuses writes (OOM); answers waiting for history stay in the
  gateway's memory, revocations go to PostgreSQL's backlog, limits stay exact, the fail-closed policy
  answers a clear 503, nobody gets a 500, and nothing is lost once it has room again;
- the spool's bound (GENAI_GATEWAY_SPOOL_MAX_EXCHANGES): at the bound new questions get 503 with
  Retry-After and the spool never holds more.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch, wait_for

SPOOL_KEY = "history:spool"
REVOCATIONS_KEY = "auth:revocations"
CACHE_PREFIX = "cache:v1:"
# What the cache may hold above an empty server's own use: a few hundred answers of ANSWER_TOKENS words.
CACHE_HEADROOM = 256 * 1024
ANSWER_TOKENS = 200
# Distinct answered requests of the churn: several times what CACHE_HEADROOM holds.
CHURN = 450


@dataclass
class Deployment:
    stack: RunningStack
    state: redis.Redis
    cache: redis.Redis
    shared: bool


@contextlib.contextmanager
def _deployment(work_dir: Path, postgres_server: infra.Service, shared: bool) -> Iterator[Deployment]:
    name = "redis-shared" if shared else "redis-apart"
    servers: list[infra.Service] = []
    database = ""
    stack = None
    try:
        if shared:
            # One Redis for everything, evicting whatever was used least recently: what the split forbids.
            state = cache = infra.start_local_redis(
                work_dir / name / "redis", infra.free_port(), policy="allkeys-lru"
            )
            servers.append(state)
            overrides = {}
        else:
            state = infra.start_local_redis(work_dir / name / "state", infra.free_port(), policy="noeviction")
            servers.append(state)
            cache = infra.start_local_redis(
                work_dir / name / "cache", infra.free_port(), policy="allkeys-lru"
            )
            servers.append(cache)
            overrides = {"GENAI_GATEWAY_CACHE_REDIS_URL": cache.url}
        database = databases.create_database(postgres_server.url)
        stack = launch(
            work_dir,
            database,
            state.url,
            upstream="sim",
            upstream_args=["--output-tokens", str(ANSWER_TOKENS), "--itl-ms", "0", "--ttft-ms", "0"],
            name=name,
            overrides={"GENAI_GATEWAY_SIMILAR_ENABLED": "false", **overrides},
        )
        with redis.Redis.from_url(state.url) as state_client, redis.Redis.from_url(cache.url) as cache_client:
            yield Deployment(stack, state_client, cache_client, shared)
    finally:
        if stack is not None:
            stack.stop_all()
        for server in reversed(servers):
            server.stop()
        if database:
            databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1])


@pytest.fixture(scope="module")
def apart(work_dir: Path, postgres_server: infra.Service) -> Iterator[Deployment]:
    with _deployment(work_dir, postgres_server, shared=False) as deployment:
        yield deployment


# --- helpers -------------------------------------------------------------------------------------------


def _ask(client: httpx.Client, user: User, prompt: str, max_tokens: int = 8) -> httpx.Response:
    return client.post("/ask", json={"prompt": prompt, "max_tokens": max_tokens}, headers=user.headers)


def _jti(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def _day_key(user: User) -> str:
    return f"quota:user:{user.id}:day:{time.strftime('%Y%m%d', time.gmtime())}"


def _titles(stack: RunningStack, user: User) -> set[str]:
    with stack.client() as client:
        listing = client.get("/api/v1/history", params={"limit": 100}, headers=user.headers)
    listing.raise_for_status()
    return {c["title"] for c in listing.json()["conversations"]}


def _spool_drained(stack: RunningStack, *gateways: str) -> bool:
    """Every gateway's spool is empty: the shared list in Redis and each process's memory."""
    admin = stack.admin_headers()
    with stack.client(timeout=10) as client:
        if client.get("/health", headers=admin).json().get("history_spool") != 0:
            return False
    for url in gateways:
        if httpx.get(f"{url}/health", headers=admin, timeout=10).json().get("history_spool") != 0:
            return False
    return True


def _metric(stack: RunningStack, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in stack.metrics("gateway").items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )


def _daily_limited(stack: RunningStack) -> User:
    """A user who has spent their tokens for the day: refused until tomorrow, from the day's counter."""
    user = stack.new_user()
    stack.set_limits(user, tokens_per_day=1)
    user.token = stack.login(user.username, user.password)
    with stack.client() as client:
        assert _ask(client, user, f"spend the day {uuid.uuid4().hex}").status_code == 200
        refused = _ask(client, user, f"once more {uuid.uuid4().hex}")
    assert refused.status_code == 429 and "daily token limit" in refused.json()["detail"], refused.text
    return user


# --- the cache churns, the state stays ------------------------------------------------------------------


def _churn(d: Deployment) -> tuple[list[str], dict[str, int]]:
    """Fill the cache many times over while state waits in the state Redis; return what state was lost
    (empty: none) and the figures."""
    stack = d.stack
    limited = _daily_limited(stack)
    day_key = _day_key(limited)
    assert d.state.exists(day_key)

    revoked = stack.new_user()
    with stack.client() as client:
        assert client.post("/api/v1/auth/logout", headers=revoked.headers).status_code == 204
        assert client.get("/api/v1/me", headers=revoked.headers).status_code == 401
    jti = _jti(revoked.token)
    assert d.state.zscore(REVOCATIONS_KEY, jti) is not None

    writer, filler = stack.new_user(), stack.new_user()
    stack.set_limits(filler, requests_per_minute=-1)
    filler.token = stack.login(filler.username, filler.password)
    written = [f"keep this answer {i} {uuid.uuid4().hex}" for i in range(3)]
    journaled_before = _metric(stack, "genai_history_journaled_total")
    replayed_before = _metric(stack, "genai_history_replayed_total")

    stack.stop("history")
    try:
        with stack.client() as client:
            for prompt in written:
                assert _ask(client, writer, prompt).status_code == 200
        assert d.state.llen(SPOOL_KEY) == len(written)

        prompts = [f"churn {i} {uuid.uuid4().hex}" for i in range(CHURN)]

        def ask(prompt: str) -> int:
            with stack.client() as client:
                return _ask(client, filler, prompt, ANSWER_TOKENS).status_code

        with ThreadPoolExecutor(4) as pool:
            # The cache's limit: a little above what the server holds once the gateway's connections for
            # four requests at a time are open (their buffers count against it too).
            assert list(pool.map(ask, [f"warm {i} {uuid.uuid4().hex}" for i in range(8)])) == [200] * 8
            d.cache.config_set("maxmemory", int(d.cache.info("memory")["used_memory"]) + CACHE_HEADROOM)
            codes = list(pool.map(ask, prompts))
        # Answers go on while the cache evicts.
        assert codes == [200] * CHURN, {code: codes.count(code) for code in set(codes)}
        cached = sum(1 for _ in d.cache.scan_iter(match=CACHE_PREFIX + "*", count=1000))
        figures = {
            "answered": CHURN,
            "cache_keys_left": cached,
            "cache_evicted_keys": int(d.cache.info("stats")["evicted_keys"]),
        }
        with stack.client() as client:
            # The full cache still takes answers and serves them; the first one, evicted, comes from the
            # model again.
            fresh = f"after the churn {uuid.uuid4().hex}"
            assert _ask(client, filler, fresh, ANSWER_TOKENS).json()["source"] == "model"
            assert _ask(client, filler, fresh, ANSWER_TOKENS).json()["source"] == "cache"
            again = _ask(client, filler, prompts[0], ANSWER_TOKENS)
            assert again.status_code == 200
            figures["first_answer_from"] = again.json()["source"]

        lost: list[str] = []
        if not d.state.exists(day_key):
            lost.append("the day's token counter")
        with stack.client() as client:
            limited_again = _ask(client, limited, f"after the churn {uuid.uuid4().hex}")
        if limited_again.status_code != 429:
            lost.append(f"the daily limit (answered {limited_again.status_code})")
        if d.state.zscore(REVOCATIONS_KEY, jti) is None:
            lost.append("the revocation in Redis")
        expected = len(written) + 8 + CHURN + 3
        figures["spool"] = int(d.state.llen(SPOOL_KEY))
        if figures["spool"] != expected:
            lost.append(f"spooled answers ({figures['spool']} of {expected} in Redis)")
        figures["state_evicted_keys"] = int(d.state.info("stats")["evicted_keys"])
        # Whatever Redis lost, a revoked token stays refused: PostgreSQL holds revocations.
        with stack.client() as client:
            assert client.get("/api/v1/me", headers=revoked.headers).status_code == 401
    finally:
        stack.start("history")
        stack.wait_healthy(60)

    wait_for(lambda: _spool_drained(stack), 90, "the spool drains")
    # Every answer went through the journal (history was down); each one journaled must have been written.
    journaled = _metric(stack, "genai_history_journaled_total") - journaled_before
    replayed = _metric(stack, "genai_history_replayed_total") - replayed_before
    figures["journaled"], figures["replayed"] = int(journaled), int(replayed)
    if replayed != journaled:
        lost.append(f"answers for history ({int(replayed)} of {int(journaled)} written)")
    if not set(written) <= _titles(stack, writer):
        lost.append("the writer's answers in history")
    return lost, figures


def test_a_full_cache_evicts_answers_and_never_state(apart: Deployment) -> None:
    lost, figures = _churn(apart)
    print("cache Redis apart (allkeys-lru), state Redis noeviction:", figures)
    assert lost == [], (lost, figures)
    assert figures["cache_evicted_keys"] > 0 and figures["cache_keys_left"] < CHURN, figures
    assert figures["state_evicted_keys"] == 0


def test_one_shared_allkeys_lru_redis_loses_state(work_dir: Path, postgres_server: infra.Service) -> None:
    """The same churn on the configuration the split forbids: the checks above find state gone."""
    with _deployment(work_dir, postgres_server, shared=True) as shared:
        lost, figures = _churn(shared)
    print("one shared Redis (allkeys-lru):", figures, "lost:", lost)
    assert figures["state_evicted_keys"] > 0
    assert lost, figures


# --- the state Redis full -------------------------------------------------------------------------------


@contextlib.contextmanager
def _full(state: redis.Redis) -> Iterator[None]:
    """The state Redis past its memory limit, as a spool that outgrew REDIS_MAXMEMORY leaves it: 2 MB of
    ballast, then a limit 1 MB below what it holds (so that a small delete does not bring it under)."""
    chunk = "x" * 65536
    try:
        for i in range(32):
            state.set(f"test:ballast:{i}", chunk)
        state.config_set("maxmemory", int(state.info("memory")["used_memory"]) - 1024 * 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            state.rpush("test:probe", "x")
        yield
    finally:
        state.config_set("maxmemory", 0)
        state.delete(*(f"test:ballast:{i}" for i in range(32)))


def test_a_full_state_redis_is_an_outage_that_loses_nothing(apart: Deployment) -> None:
    stack, state = apart.stack, apart.state
    closed = stack.start_extra_gateway("gateway-closed", redis_failure_policy="closed", redis_cooldown_s="30")
    try:
        wait_for(lambda: _spool_drained(stack, closed), 90, "the spool is empty")
        limited = _daily_limited(stack)
        writer, leaving = stack.new_user(), stack.new_user()
        oom_before = _metric(stack, "genai_redis_errors_total", error="OutOfMemoryError")
        asked: list[str] = []
        codes: list[int] = []
        with _full(state):
            with stack.client() as client:
                # History up: nothing the service needs to write to the state Redis fails. Limits are
                # exact (the admission script is let through), answers go on.
                refused = _ask(client, limited, f"full {uuid.uuid4().hex}")
                assert refused.status_code == 429, refused.text
                asked.append(f"full but answered {uuid.uuid4().hex}")
                assert _ask(client, writer, asked[-1]).status_code == 200
                # A logout while Redis refuses the revocation: PostgreSQL has it, the token is dead.
                assert client.post("/api/v1/auth/logout", headers=leaving.headers).status_code == 204
                assert client.get("/api/v1/me", headers=leaving.headers).status_code == 401
                assert state.zscore(REVOCATIONS_KEY, _jti(leaving.token)) is None
                # Signing in needs the login throttle's counters: counted in auth's process meanwhile.
                assert stack.login(writer.username, writer.password)

            stack.stop("history")
            try:
                # History down: the answers cannot be spooled in Redis. Fail-open answers on and keeps
                # them in the gateway's memory.
                with stack.client() as client:
                    for i in range(4):
                        asked.append(f"spooled in memory {i} {uuid.uuid4().hex}")
                        response = _ask(client, writer, asked[-1])
                        codes.append(response.status_code)
                        assert response.status_code == 200, response.text
                    health = client.get("/health", headers=stack.admin_headers()).json()
                assert health["history_spool"] >= 4, health
                assert state.llen(SPOOL_KEY) == 0
                assert _metric(stack, "genai_redis_errors_total", error="OutOfMemoryError") > oom_before
                # Fail-closed: the answer that met the full Redis is kept; then a clear 503 for the
                # cool-down, as for any Redis outage.
                with httpx.Client(base_url=closed, timeout=30) as client:
                    asked.append(f"closed but kept {uuid.uuid4().hex}")
                    first = _ask(client, writer, asked[-1])
                    assert first.status_code == 200, first.text
                    second = _ask(client, writer, f"closed and refused {uuid.uuid4().hex}")
                    codes += [first.status_code, second.status_code]
                    assert second.status_code == 503, second.text
                    assert "Redis" in second.json()["detail"]
            finally:
                stack.start("history")
        assert 500 not in codes

        # Room again: every answer reaches history, the revocation reaches Redis, limits still hold.
        stack.wait_healthy(60)
        wait_for(lambda: _spool_drained(stack, closed), 90, "the spools drain")
        assert set(asked) <= _titles(stack, writer)
        wait_for(
            lambda: state.zscore(REVOCATIONS_KEY, _jti(leaving.token)) is not None,
            90,
            "the revocation made during the outage is copied to Redis",
        )
        with stack.client() as client:
            assert _ask(client, limited, f"after {uuid.uuid4().hex}").status_code == 429
            assert client.get("/api/v1/me", headers=leaving.headers).status_code == 401
    finally:
        stack.stop("gateway-closed")


# --- the spool's bound ----------------------------------------------------------------------------------


def test_the_spool_stops_at_its_bound(apart: Deployment) -> None:
    """Answers wait in the journal while history is down; once the gateway has found history failing and the
    journal at its bound, new questions get 503 until it drains. Answers given before it noticed (the journal's
    first pass takes a moment to fail) are kept too: none is ever dropped."""
    stack, state = apart.stack, apart.state
    bounded = stack.start_extra_gateway("gateway-bounded", spool_max_exchanges="3")
    try:
        wait_for(lambda: _spool_drained(stack, bounded), 90, "the spool is empty")
        writer = stack.new_user()
        answered: list[str] = []
        refused: httpx.Response | None = None
        stack.stop("history")
        try:
            with httpx.Client(base_url=bounded, timeout=30) as client:
                deadline = time.monotonic() + 30
                while refused is None and time.monotonic() < deadline:
                    prompt = f"bounded {len(answered)} {uuid.uuid4().hex}"
                    response = _ask(client, writer, prompt)
                    if response.status_code == 200:
                        answered.append(prompt)
                    else:
                        refused = response
                    time.sleep(0.2)
            assert refused is not None, f"{len(answered)} answered, none refused"
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"]
            assert "history" in refused.json()["detail"]
            assert len(answered) >= 3 and state.llen(SPOOL_KEY) == len(answered)
        finally:
            stack.start("history")
        stack.wait_healthy(60)
        wait_for(lambda: _spool_drained(stack, bounded), 90, "the spool drains")
        assert set(answered) <= _titles(stack, writer)
        with httpx.Client(base_url=bounded, timeout=30) as client:
            assert _ask(client, writer, f"room again {uuid.uuid4().hex}").status_code == 200
    finally:
        stack.stop("gateway-bounded")
