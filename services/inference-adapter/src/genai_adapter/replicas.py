"""Several model servers (one vLLM per GPU) behind one adapter: where each call goes, and what happens
when a server fails.

Who goes next is the fair scheduler's decision (users take turns; it admits GENAI_ADAPTER_MAX_CONCURRENT
generations per replica in rotation, see `capacity`); where an admitted call goes is decided here:

- candidates: the replicas that list the call's model on /v1/models (asked when a replica joins or
  comes back, and on every ListModels), then those whose list is not known (yet, or again: a replica
  forgets its list when it comes back, and when it answers 404 for a model it listed); when neither,
  every replica (whose 404 the caller then gets, as with one server).
- in rotation: a candidate that answers its health checks (`Replica.up`) and whose circuit breaker
  lets requests through (`breaker`). Those that list the model are chosen from first, then those whose
  list is not known: a healthy replica is never passed over for one out of rotation. When no candidate
  is in rotation, every candidate is tried anyway, least loaded first: the checks are up to a second
  old, and a call that can only fail should fail as fast as it does with one server.
- load, counted in requests: the generations in flight from here, plus the requests waiting inside
  the server, plus its KV-cache use times its capacity (both read from its /metrics at every health
  check; none from a server without vLLM's metrics, such as llama.cpp's: in-flight only).
- with an affinity key (the conversation): consistent hashing with bounded loads (`ring`), so that a
  conversation stays on the replica holding its prefix cache until that one is clearly the busiest;
  without one: the least loaded, ties broken at random.

Failover: an attempt that fails before any text reached the caller (refused or lost connection,
timeout, 5xx, 429, a stream that ended before its first token) is tried on another replica, each
replica at most once, while the caller's deadline lasts. After the first token a failure ends the
stream with UNAVAILABLE, which the gateway turns into an explicit error event: never a silently short
answer. A request the server refused as invalid (4xx) is not retried: any replica would refuse it.

The list changes without a restart: the file GENAI_ADAPTER_UPSTREAM_URLS_FILE is read again on SIGHUP
and every GENAI_ADAPTER_UPSTREAM_REFRESH_S; with GENAI_ADAPTER_UPSTREAM_RESOLVE, each host name is
resolved again as often, one replica per address. A replica that leaves the list finishes what it
carries; one that joins starts with no load known.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from prometheus_client import Counter, Gauge
from yarl import URL

from genai_adapter.breaker import Breaker
from genai_adapter.ring import HashRing, bounded_choice
from genai_adapter.settings import AdapterSettings, read_url_file
from genai_adapter.upstream import (
    ReplicaLoad,
    StreamEvent,
    TokenCounts,
    Upstream,
    UpstreamError,
    timed_out_at_server,
)
from genai_common.waiting import within

logger = logging.getLogger(__name__)

T = TypeVar("T")

NO_REPLICA_MESSAGE = "no model server available"
# Longest wait for a name's addresses; a failed look-up keeps the addresses known before.
RESOLVE_TIMEOUT_S = 5.0

# For the "model down" alert: kept as it was with one server.
UPSTREAM_UP = Gauge(
    "genai_adapter_upstream_up",
    "1 while at least one model server replica answers the adapter's health checks (GET /health), else 0",
)
# Per replica, labelled with its URL: a bounded set, the replicas in the list now (a replica that
# leaves the list takes its series with it).
REPLICA_UP = Gauge(
    "genai_adapter_replica_up", "1 while the replica answers its health checks, else 0", ["upstream"]
)
REPLICA_IN_FLIGHT = Gauge(
    "genai_adapter_replica_in_flight", "Generations this adapter has on the replica now", ["upstream"]
)
REPLICA_REQUESTS = Counter(
    "genai_adapter_replica_requests_total",
    "Generations sent to the replica (each failover attempt counts where it went)",
    ["upstream"],
)
REPLICA_FAILOVERS = Counter(
    "genai_adapter_replica_failovers_total",
    "Calls that failed on the replica before their first token and were tried on another",
    ["upstream"],
)
REPLICA_BREAKER = Gauge(
    "genai_adapter_replica_breaker_state",
    "The replica's circuit breaker: 0 closed, 1 half-open (one trial request), 2 open (skipped)",
    ["upstream"],
)
REPLICA_WAITING = Gauge(
    "genai_adapter_replica_waiting",
    "Requests waiting inside the replica (its vllm:num_requests_waiting at the last check)",
    ["upstream"],
)
REPLICA_CHECKS = Counter(
    "genai_adapter_replica_health_checks_total",
    "The adapter's health checks of the replica (GET /health), by result: ok or failed",
    ["upstream", "result"],
)
CHECK_RESULTS = ("ok", "failed")
REPLICA_KV_CACHE = Gauge(
    "genai_adapter_replica_kv_cache_usage",
    "The replica's KV-cache use, 0..1 (its vllm:kv_cache_usage_perc at the last check)",
    ["upstream"],
)
_PER_REPLICA = (
    REPLICA_UP,
    REPLICA_IN_FLIGHT,
    REPLICA_REQUESTS,
    REPLICA_FAILOVERS,
    REPLICA_BREAKER,
    REPLICA_WAITING,
    REPLICA_KV_CACHE,
)
AFFINITY = Counter(
    "genai_adapter_affinity_total",
    "Routed generations by affinity: kept (the key's own replica), moved (it was too busy or out), "
    "none (no key: least loaded)",
    ["result"],
)
# Looked up once: every routed generation counts in one of them.
_AFFINITY = {result: AFFINITY.labels(result) for result in ("kept", "moved", "none")}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One replica's address: `name` identifies it (and labels its metrics), `url` is where to connect,
    `host` the name it answers to when `url` holds one of its addresses, `source` the configured URL."""

    name: str
    url: str
    host: str | None
    source: str


class Replica:
    """One model server: its HTTP client, health, breaker, load and models."""

    def __init__(self, endpoint: Endpoint, settings: AdapterSettings) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.client = Upstream(settings, endpoint.url, endpoint.host)
        self.capacity = settings.max_concurrent
        self.breaker = Breaker(settings.breaker_failures, settings.breaker_cooldown_s)
        # Trusted until its first check says otherwise, so that a fresh adapter serves at once.
        self.up = True
        self.failed_checks = 0
        self.in_flight = 0
        self.reported = ReplicaLoad()
        # Model ids it serves; None until asked (and again after it came back: it may serve another now).
        self.models: set[str] | None = None
        self.retired = False
        self.watcher: asyncio.Task[None] | None = None
        # Set once its first health check is done (the start waits for the first round).
        self.checked_once = asyncio.Event()
        # The series each generation on it touches, looked up once (labels() is a lock and a dict each time).
        self.in_flight_metric = REPLICA_IN_FLIGHT.labels(self.name)
        self.requests_metric = REPLICA_REQUESTS.labels(self.name)
        self.breaker_metric = REPLICA_BREAKER.labels(self.name)

    @property
    def load(self) -> float:
        """Requests it carries, in-flight here plus what it reports (see the module's docstring)."""
        return self.in_flight + self.reported.waiting + self.reported.kv_cache_usage * self.capacity

    def in_rotation(self) -> bool:
        return self.up and self.breaker.available()

    def publish(self) -> None:
        """Its gauges now; its counters' series exist from its first moment (at 0), for rate() and alerts."""
        for metric in (REPLICA_IN_FLIGHT, REPLICA_REQUESTS, REPLICA_FAILOVERS):
            metric.labels(self.name)
        for result in CHECK_RESULTS:
            REPLICA_CHECKS.labels(self.name, result)
        REPLICA_UP.labels(self.name).set(1 if self.up else 0)
        REPLICA_BREAKER.labels(self.name).set(int(self.breaker.state))
        REPLICA_WAITING.labels(self.name).set(self.reported.waiting)
        REPLICA_KV_CACHE.labels(self.name).set(self.reported.kv_cache_usage)


class _Attempt:
    """One call on one replica; says how it ended to the replica's breaker exactly once."""

    def __init__(self, replica: Replica, model: str) -> None:
        self.replica = replica
        self.model = model
        self._settled = False

    def ok(self) -> None:
        self._settle()
        self.replica.breaker.success()

    def failed(self, exc: UpstreamError) -> None:
        self._settle()
        if replica_fault(exc):
            self.replica.breaker.failure()
        else:
            self.replica.breaker.release()
            models = self.replica.models
            if exc.code == grpc.StatusCode.NOT_FOUND and models is not None and self.model in models:
                # It does not serve the model it listed (restarted with another?): ask it again. A 404 for a
                # model it never listed (a misspelt name) tells nothing new about it.
                self.replica.models = None

    def abandoned(self) -> None:
        if not self._settled:
            self._settle()
            self.replica.breaker.release()

    def _settle(self) -> None:
        self._settled = True


def replica_fault(exc: UpstreamError) -> bool:
    """Whether a failure says the replica is unwell (rather than the request invalid, or the caller's
    time over): such failures open its breaker, and are worth another replica."""
    if exc.code == grpc.StatusCode.UNAVAILABLE:
        return True
    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # The server's own timeout (no byte for READ_TIMEOUT_S, its 504), not the caller's deadline
        # (an asyncio TimeoutError), which no other replica can undo.
        return timed_out_at_server(exc)
    return False


def _worth_another(exc: UpstreamError) -> bool:
    # 429: this replica is full; another may not be.
    return replica_fault(exc) or exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED


class ReplicaSet:
    """The model servers of GENAI_ADAPTER_UPSTREAM_URL(S)(_FILE), used as one (see the module's docstring).

    `on_capacity(n)` hears the generations the replicas in rotation can run at once (at least one
    replica's worth), at start and whenever it changes: the fair scheduler's limit.
    """

    def __init__(self, settings: AdapterSettings, on_capacity: Callable[[int], None] | None = None) -> None:
        self._settings = settings
        self._on_capacity = on_capacity
        self._replicas: dict[str, Replica] = {}
        self._ring = HashRing([])
        # Round robin's counter (GENAI_ADAPTER_ROUTING=round_robin).
        self._turn = 0
        self._reload = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._capacity = 0
        self._closed = False

    # --- the list ----------------------------------------------------------------------------------

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    @property
    def capacity(self) -> int:
        return self._capacity

    async def start(self) -> None:
        """Read the list (a file that cannot be read stops the start here), check every replica once, so
        that the first requests already avoid a dead one, and begin watching them and the list."""
        urls = self._configured_urls()
        self._apply(await self._endpoints(urls))
        first_round = [asyncio.ensure_future(r.checked_once.wait()) for r in self._replicas.values()]
        # A check takes at most health_timeout_s, and asking for the model list as long again.
        _, late = await asyncio.wait(first_round, timeout=2 * self._settings.health_timeout_s + 1)
        for waiter in late:
            waiter.cancel()
        self._refresher = asyncio.create_task(self._refresh_forever())

    def reload(self) -> None:
        """Read the list again now (SIGHUP)."""
        self._reload.set()

    async def refresh(self) -> None:
        """Read the file and resolve the names again; on any failure keep what is known."""
        try:
            urls = self._configured_urls()
        except ValueError as exc:
            logger.error("the model server list was not read again (%s); the current one stays", exc)
            return
        self._apply(await self._endpoints(urls))

    def _configured_urls(self) -> list[str]:
        path = self._settings.upstream_urls_file
        if path is None:
            return self._settings.replica_urls()
        return read_url_file(path)

    async def _endpoints(self, urls: list[str]) -> list[Endpoint]:
        found: list[Endpoint] = []
        for url in urls:
            found += await self._resolve(url)
        return found

    async def _resolve(self, url: str) -> list[Endpoint]:
        """One endpoint per address of the URL's host name (with upstream_resolve), else the URL itself."""
        plain = [Endpoint(url, url, None, url)]
        parsed = URL(url)
        if not self._settings.upstream_resolve or parsed.host is None or _is_address(parsed.host):
            return plain
        # The scheme's default when the URL names none.
        port = parsed.port
        try:
            infos = await within(
                asyncio.get_running_loop().getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM),
                RESOLVE_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            known = [r.endpoint for r in self._replicas.values() if r.endpoint.source == url]
            logger.warning(
                "%s did not resolve (%s); keeping %s known addresses", parsed.host, exc, len(known)
            )
            return known or plain
        # As the Host header has it: with the port only when the URL names one.
        host = (
            parsed.raw_host if parsed.explicit_port is None else f"{parsed.raw_host}:{parsed.explicit_port}"
        )
        endpoints = []
        for address in sorted({str(info[4][0]) for info in infos}):
            at = str(parsed.with_host(address))
            endpoints.append(Endpoint(at, at, host, url))
        return endpoints or plain

    def _apply(self, endpoints: list[Endpoint]) -> None:
        wanted = {e.name: e for e in endpoints}
        if list(wanted) == list(self._replicas):
            return
        for name in [n for n in self._replicas if n not in wanted]:
            self._retire(self._replicas.pop(name))
        for name, endpoint in wanted.items():
            if name not in self._replicas:
                replica = self._replicas[name] = Replica(endpoint, self._settings)
                replica.publish()
                replica.watcher = asyncio.create_task(self._watch(replica))
                logger.info("model server replica %s joins", name)
        # In the configured order, so that the union of model lists (and the default model) is stable.
        self._replicas = {name: self._replicas[name] for name in wanted}
        self._ring = HashRing(self._replicas)
        self._rotation_changed()

    def _retire(self, replica: Replica) -> None:
        logger.info(
            "model server replica %s leaves (%s generations still on it)", replica.name, replica.in_flight
        )
        replica.retired = True
        if replica.watcher is not None:
            replica.watcher.cancel()
        for metric in _PER_REPLICA:
            with contextlib.suppress(KeyError):
                metric.remove(replica.name)
        for result in CHECK_RESULTS:
            with contextlib.suppress(KeyError):
                REPLICA_CHECKS.remove(replica.name, result)
        if replica.in_flight == 0:
            self._close_later(replica)

    def _close_later(self, replica: Replica) -> None:
        task = asyncio.get_running_loop().create_task(replica.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await within(self._reload.wait(), self._settings.upstream_refresh_s)
            self._reload.clear()
            try:
                await self.refresh()
            except Exception:
                logger.exception("reading the model server list failed; the current one stays")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._refresher, *(r.watcher for r in self._replicas.values())) if t]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for replica in self._replicas.values():
            await replica.client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- health ------------------------------------------------------------------------------------

    async def _watch(self, replica: Replica) -> None:
        """Every health_interval_s: GET /health and /metrics; ask for the model list while it is unknown."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                up, load = await asyncio.gather(
                    replica.client.probe(settings.health_timeout_s),
                    replica.client.load(settings.health_timeout_s),
                )
                self.checked(replica, up)
                replica.reported = (load if up else None) or ReplicaLoad()
                # Only of one that answered just now, and only when there is a choice to make: a lone
                # server is every request's candidate (and llama.cpp's server takes its model's lock for
                # the list, which a stream in progress would feel).
                if up and replica.models is None and len(self._replicas) > 1:
                    await self._ask_models(replica)
                replica.publish()
            except Exception:
                logger.exception("checking model server replica %s failed", replica.name)
            replica.checked_once.set()
            await asyncio.sleep(max(0.0, began + settings.health_interval_s - loop.time()))

    def checked(self, replica: Replica, answered: bool) -> None:
        """One health check's result: `unhealthy_after` failures in a row take it out, one answer back in."""
        # Counted before the change of rotation is published: whoever sees the replica out (or back) on
        # /metrics also sees the check that decided it.
        REPLICA_CHECKS.labels(replica.name, "ok" if answered else "failed").inc()
        if answered:
            replica.failed_checks = 0
            if not replica.up:
                replica.up = True
                replica.models = None
                replica.client.forget_missing_pages()
                REPLICA_UP.labels(replica.name).set(1)
                logger.warning("model server replica %s answers again", replica.name)
                self._rotation_changed()
            return
        replica.failed_checks += 1
        if replica.up and replica.failed_checks >= self._settings.unhealthy_after:
            replica.up = False
            REPLICA_UP.labels(replica.name).set(0)
            logger.warning(
                "model server replica %s does not answer (%s checks); out of rotation",
                replica.name,
                replica.failed_checks,
            )
            self._rotation_changed()

    async def _ask_models(self, replica: Replica) -> None:
        # Bounded as a health check is: the next check must not wait long for this.
        with contextlib.suppress(UpstreamError):
            cards = await replica.client.list_models(self._settings.health_timeout_s)
            replica.models = {card["id"] for card in cards}

    def _rotation_changed(self) -> None:
        up = sum(1 for r in self._replicas.values() if r.up)
        UPSTREAM_UP.set(1 if up else 0)
        capacity = self._settings.max_concurrent * max(1, up)
        if capacity != self._capacity:
            self._capacity = capacity
            if self._on_capacity is not None:
                self._on_capacity(capacity)

    # --- routing -----------------------------------------------------------------------------------

    def _candidates(self, model: str) -> tuple[list[Replica], list[Replica]]:
        """Those that list the model and those whose list is not known; when neither, every replica."""
        replicas = list(self._replicas.values())
        listed = [r for r in replicas if r.models is not None and model in r.models]
        unknown = [r for r in replicas if r.models is None]
        if listed or unknown:
            return listed, unknown
        return replicas, []

    def pick(self, model: str, key: str = "", exclude: Collection[str] = ()) -> Replica | None:
        """The replica for the next attempt of a call, or None when every candidate has been tried."""
        listed, unknown = ([r for r in tier if r.name not in exclude] for tier in self._candidates(model))
        candidates = listed + unknown
        if not candidates:
            return None
        ready = [r for r in listed if r.in_rotation()] or [r for r in unknown if r.in_rotation()]
        if key and ready:
            name, kept = bounded_choice(
                self._ring, key, {r.name: r.load for r in ready}, self._settings.affinity_load_factor
            )
            _AFFINITY["kept" if kept else "moved"].inc()
            return self._replicas[name]
        _AFFINITY["none"].inc()
        pool = ready or candidates
        if self._settings.routing == "round_robin":
            self._turn += 1
            return pool[self._turn % len(pool)]
        least = min(r.load for r in pool)
        return random.choice([r for r in pool if r.load == least])  # noqa: S311 - spreading, not secrets

    @contextlib.contextmanager
    def _attempt(self, replica: Replica, model: str, generation: bool) -> Iterator[_Attempt]:
        attempt = _Attempt(replica, model)
        replica.breaker.acquire()
        if generation:
            replica.in_flight += 1
            replica.in_flight_metric.inc()
            replica.requests_metric.inc()
        try:
            yield attempt
        finally:
            attempt.abandoned()
            if generation:
                replica.in_flight -= 1
                if replica.retired:
                    if replica.in_flight == 0:
                        self._close_later(replica)
                else:
                    replica.in_flight_metric.dec()
            if not replica.retired:
                replica.breaker_metric.set(int(replica.breaker.state))

    def _next(
        self, model: str, key: str, tried: set[str], last: tuple[Replica, UpstreamError] | None
    ) -> Replica:
        """The replica for the next attempt; raises the last failure (or UNAVAILABLE) when there is none."""
        replica = self.pick(model, key, tried)
        if replica is None:
            if last is not None:
                raise last[1]
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, NO_REPLICA_MESSAGE)
        if last is not None:
            failed, exc = last
            REPLICA_FAILOVERS.labels(failed.name).inc()
            logger.warning(
                "model server replica %s failed before the first token (%s); trying %s",
                failed.name,
                exc.message,
                replica.name,
            )
        tried.add(replica.name)
        return replica

    async def _call(
        self,
        model: str,
        key: str,
        time_remaining: float | None,
        call: Callable[[Upstream, float | None], Awaitable[T]],
        *,
        generation: bool,
    ) -> T:
        """`call` on the chosen replica, then on others while it fails before answering (see failover)."""
        deadline = _Deadline(time_remaining)
        tried: set[str] = set()
        last: tuple[Replica, UpstreamError] | None = None
        while True:
            replica = self._next(model, key, tried, last)
            with self._attempt(replica, model, generation) as attempt:
                try:
                    result = await call(replica.client, deadline.remaining())
                except UpstreamError as exc:
                    attempt.failed(exc)
                    if not (_worth_another(exc) and deadline.left()):
                        raise
                    last = (replica, exc)
                    continue
                attempt.ok()
                return result

    # --- what the servicer calls -------------------------------------------------------------------

    async def complete(
        self, path: str, payload: dict[str, Any], time_remaining: float | None, key: str = ""
    ) -> dict[str, Any]:
        """A generation without streaming (see `Upstream.complete`), on the chosen replica."""
        return await self._call(
            str(payload.get("model", "")),
            key,
            time_remaining,
            lambda client, left: client.complete(path, payload, left),
            generation=True,
        )

    async def stream(
        self, path: str, payload: dict[str, Any], time_remaining: float | None, key: str = ""
    ) -> AsyncIterator[StreamEvent]:
        """A streamed generation (see `Upstream.stream`), moved to another replica while no text has
        been yielded; a failure after that is raised to the caller."""
        model = str(payload.get("model", ""))
        deadline = _Deadline(time_remaining)
        tried: set[str] = set()
        last: tuple[Replica, UpstreamError] | None = None
        while True:
            replica = self._next(model, key, tried, last)
            started = False
            with self._attempt(replica, model, generation=True) as attempt:
                try:
                    async with aclosing(replica.client.stream(path, payload, deadline.remaining())) as events:
                        async for event in events:
                            if event.text or event.tool_calls:
                                started = True
                            yield event
                except UpstreamError as exc:
                    attempt.failed(exc)
                    if started or not (_worth_another(exc) and deadline.left()):
                        raise
                    last = (replica, exc)
                    continue
                attempt.ok()
                return

    async def count_tokens(self, model: str, texts: list[str], time_remaining: float | None) -> TokenCounts:
        """Token counts by the tokenizer of a replica serving `model` (any replica's: they load the same)."""
        return await self._call(
            model,
            "",
            time_remaining,
            lambda client, left: client.count_tokens(model, texts, left),
            generation=False,
        )

    async def list_models(self, time_remaining: float | None) -> list[dict[str, Any]]:
        """The union of the replicas' model lists (in rotation, or all when none is), first card per id."""
        replicas = [r for r in self._replicas.values() if r.in_rotation()] or list(self._replicas.values())
        answers = await asyncio.gather(
            *(r.client.list_models(time_remaining) for r in replicas), return_exceptions=True
        )
        cards: dict[str, dict[str, Any]] = {}
        failures: list[UpstreamError] = []
        for replica, answer in zip(replicas, answers, strict=True):
            if isinstance(answer, UpstreamError):
                failures.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                replica.models = {card["id"] for card in answer}
                for card in answer:
                    cards.setdefault(card["id"], card)
        if failures and not cards:
            raise failures[0]
        return list(cards.values())


class _Deadline:
    """What is left of a call's time across its attempts (None: no deadline of the caller's)."""

    def __init__(self, time_remaining: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._at = None if time_remaining is None else loop.time() + time_remaining

    def remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - self._loop.time())

    def left(self) -> bool:
        return self._at is None or self._loop.time() < self._at


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
