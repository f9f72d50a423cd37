"""The OpenAI-compatible model server over HTTP, and the one place where its failures get gRPC codes.

What can go wrong, and what the caller sees (see `map_error`):

    connection refused / connect timeout / 5xx / reset mid-stream   -> UNAVAILABLE
    no byte for READ_TIMEOUT_S, call longer than TOTAL_TIMEOUT_S
      or than the caller's deadline                                 -> DEADLINE_EXCEEDED
    400, 413, 422 (message passed on)                               -> INVALID_ARGUMENT
    500 reporting a request validation error (llama-cpp-python
      answers an unsupported field so; message up to the trace)     -> INVALID_ARGUMENT
    404 (unknown model)                                             -> NOT_FOUND
    429                                                             -> RESOURCE_EXHAUSTED
    401, 403 (the adapter's API key is wrong)                       -> UNAVAILABLE, logged as an error
    a body that is not the OpenAI shape, any other status           -> UNAVAILABLE, logged as an error
      (the server is broken or is not a model server: the caller
      can only try again later, like when it is down)
    no tokenizer endpoint (neither vLLM's nor llama.cpp's)          -> UNIMPLEMENTED

Token counting uses whichever tokenizer endpoint the server has, found once and remembered:
vLLM's `POST /tokenize` ({"model", "prompt"} -> {"count", "max_model_len", "tokens"}) or
llama-cpp-python's `POST /extras/tokenize/count` ({"model", "input"} -> {"count"}), both at the
server's root (the upstream URL without its /v1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import grpc
import orjson
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from genai_adapter.settings import AdapterSettings
from genai_common.request_id import current_request_id

logger = logging.getLogger(__name__)

# Below uvicorn's (and so vLLM's) 5 s keep-alive, so that a pooled connection is never reused just as
# the server closes it, which would fail a request that cannot safely be retried.
KEEPALIVE_EXPIRY_S = 4.0
# An error body is a short JSON object; read no more than this of it.
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 1000
# After [DONE] only the end of the chunked body should follow; never wait long for it.
DRAIN_AFTER_DONE_S = 1.0
# Pauses before the second, third... attempt to connect (the first retry is at once), as httpcore made them.
RETRY_BACKOFF_S = 0.5

CHAT_PATH = "chat/completions"
COMPLETIONS_PATH = "completions"

UNAVAILABLE_MESSAGE = "model server unavailable"
TIMEOUT_MESSAGE = "model server timed out"
CREDENTIALS_MESSAGE = "upstream rejected the adapter's credentials"
NO_TOKENIZER_MESSAGE = (
    "the model server exposes no tokenizer (neither vLLM's /tokenize nor llama.cpp's /extras/tokenize/count)"
)

# Texts counted at once per CountTokens call: enough to hide the round trips, few enough to leave the
# connection pools to generations.
COUNT_CONCURRENCY = 8
# A server found to have no tokenizer is asked again after this long (it may have been replaced).
NO_TOKENIZER_RECHECK_S = 60.0


# What went wrong with the model server, by kind (one count per failed call, see `map_error`).
ERROR_KINDS = (
    "connect",
    "timeout",
    "connection_lost",
    "http_4xx",
    "http_429",
    "http_5xx",
    "credentials",
    "invalid_response",
)
UPSTREAM_ERRORS = Counter(
    "genai_adapter_upstream_errors_total", "Failed calls to the model server, by kind of failure", ["kind"]
)
for _kind in ERROR_KINDS:
    UPSTREAM_ERRORS.labels(_kind)


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, UpstreamStatus):
        if exc.status in (401, 403):
            return "credentials"
        if exc.status == 429:
            return "http_429"
        if exc.status in (408, 504):
            return "timeout"
        return "http_5xx" if exc.status >= 500 else "http_4xx"
    if isinstance(exc, _CONNECT_FAILURES):
        return "connect"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, _CONNECTION_FAILURES):
        return "connection_lost"
    return "invalid_response"


# The gauges of a replica's load that vLLM exports (the KV-cache one under its v0 name too); summed over
# the samples, which differ by model name and, with data parallelism, by engine.
WAITING_METRIC = "vllm:num_requests_waiting"
KV_CACHE_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_LOAD_METRICS = (WAITING_METRIC, *KV_CACHE_METRICS)


class UpstreamError(Exception):
    """An upstream failure, already translated into the gRPC status the caller gets."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class UpstreamStatus(Exception):
    """The upstream answered with an HTTP error status (or an error object inside a stream)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class BadUpstreamResponse(Exception):
    """The upstream answered, but not in the OpenAI shape."""


def map_error(exc: Exception) -> UpstreamError:
    """Translate whatever an upstream call raised into the caller's gRPC status and message."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, _UPSTREAM_FAILURES):
        UPSTREAM_ERRORS.labels(_error_kind(exc)).inc()
    code = grpc.StatusCode
    if isinstance(exc, UpstreamStatus):
        status, detail = exc.status, exc.message
        if status in (400, 413, 422):
            return UpstreamError(code.INVALID_ARGUMENT, detail or "the model server rejected the request")
        if status == 404:
            return UpstreamError(code.NOT_FOUND, detail or "model not found")
        if status == 429:
            return UpstreamError(code.RESOURCE_EXHAUSTED, "model server is overloaded; try again shortly")
        if status in (401, 403):
            logger.error("the model server refused the adapter's API key (HTTP %s)", status)
            return UpstreamError(code.UNAVAILABLE, CREDENTIALS_MESSAGE)
        if status == 500 and _VALIDATION_FAILURE.match(detail):
            return UpstreamError(code.INVALID_ARGUMENT, detail.split("\n\n", 1)[0])
        if status in (408, 504):
            return UpstreamError(code.DEADLINE_EXCEEDED, TIMEOUT_MESSAGE)
        if status >= 500:
            logger.warning("model server error HTTP %s: %s", status, detail)
            return UpstreamError(code.UNAVAILABLE, UNAVAILABLE_MESSAGE)
        logger.error("unexpected HTTP %s from the model server: %s", status, detail)
        return UpstreamError(code.UNAVAILABLE, f"unexpected answer from the model server (HTTP {status})")
    # A connect timeout means the server is unreachable, not slow: checked before other timeouts.
    if isinstance(exc, _CONNECT_FAILURES):
        logger.warning("model server unreachable: %s", exc)
        return UpstreamError(code.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    if isinstance(exc, TimeoutError):
        # The server's silence (aiohttp's read timeout) or the call's time (the budget's asyncio timeout).
        logger.warning("model server timed out (%s)", type(exc).__name__)
        return UpstreamError(code.DEADLINE_EXCEEDED, TIMEOUT_MESSAGE)
    if isinstance(exc, _CONNECTION_FAILURES):
        # Disconnected, reset, a broken chunked body or a response that is not HTTP: the connection
        # broke, typically mid-stream.
        logger.warning("model server connection failed: %s: %s", type(exc).__name__, exc)
        return UpstreamError(code.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    if isinstance(exc, BadUpstreamResponse):
        logger.error("invalid response from the model server: %s", exc)
        return UpstreamError(code.UNAVAILABLE, "the model server sent an invalid response")
    raise TypeError(f"not an upstream failure: {exc!r}") from exc


# FastAPI's RequestValidationError as text ("1 validation error:\n  {...}"): always the request's fault,
# whatever status the server wrapped it in.
_VALIDATION_FAILURE = re.compile(r"\d+ validation errors?:")

# Nothing was sent when these are raised: the only failures worth another attempt on the same server.
_CONNECT_FAILURES = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
# Everything else that aiohttp (or the socket under it) raises once a request is under way.
_CONNECTION_FAILURES = (aiohttp.ClientError, ConnectionError)
_UPSTREAM_FAILURES = (UpstreamStatus, BadUpstreamResponse, *_CONNECTION_FAILURES, TimeoutError)


def timed_out_at_server(exc: UpstreamError) -> bool:
    """Whether a DEADLINE_EXCEEDED came from the server (no byte for READ_TIMEOUT_S, its 408 or 504) rather
    than from the caller's deadline or the call's budget (an asyncio timeout, which no other server undoes)."""
    return isinstance(exc.__cause__, aiohttp.ServerTimeoutError | UpstreamStatus)


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except _UPSTREAM_FAILURES as exc:
        raise map_error(exc) from exc


def error_message(body: bytes) -> str:
    """The human message in an error body, whichever shape the server used."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:MAX_ERROR_MESSAGE]
    message: Any = None
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):  # vLLM now, OpenAI, llama.cpp: {"error": {"message": ...}}
            message = err.get("message")
        elif isinstance(err, str):  # vLLM's API-key check: {"error": "Unauthorized"}
            message = err
        if message is None:  # older vLLM: {"object": "error", "message": ...}
            message = obj.get("message")
        if message is None:  # FastAPI validation: {"detail": ...}
            message = obj.get("detail")
    if message is None:
        return text[:MAX_ERROR_MESSAGE]
    return (message if isinstance(message, str) else json.dumps(message))[:MAX_ERROR_MESSAGE]


def _status_of_error_event(obj: dict[str, Any]) -> int:
    err = obj.get("error")
    raw = err.get("code") if isinstance(err, dict) else obj.get("code")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 500


@dataclass(slots=True)
class ToolCallPiece:
    """A tool call the model made, or in a stream a piece of one (pieces of one call share its index).

    In a stream the first piece of a call has its id, type and name, and later ones only more of its
    arguments; in a whole answer each call is complete.
    """

    index: int
    id: str = ""
    type: str = ""
    name: str = ""
    arguments: str = ""


def read_tool_calls(raw: Any, *, streamed: bool) -> list[ToolCallPiece]:
    """The `tool_calls` of a message (or of a stream's delta), checked to be in OpenAI's shape."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadUpstreamResponse("tool_calls is not a list")
    calls: list[ToolCallPiece] = []
    for position, call in enumerate(raw):
        if not isinstance(call, dict):
            raise BadUpstreamResponse("a tool call that is not an object")
        function = call.get("function") or {}
        index = call.get("index", None if streamed else position)
        if not isinstance(function, dict) or not isinstance(index, int) or isinstance(index, bool):
            raise BadUpstreamResponse("a tool call without a function object or an index")
        fields = {"id": call.get("id"), "type": call.get("type"), **function}
        if not all(isinstance(fields.get(k), str | None) for k in ("id", "type", "name", "arguments")):
            raise BadUpstreamResponse("a tool call whose id, type, name or arguments is not a string")
        calls.append(
            ToolCallPiece(
                index=index,
                id=fields["id"] or "",
                # A whole answer's calls are all functions, whether or not the server says so.
                type=fields["type"] or ("" if streamed else "function"),
                name=fields.get("name") or "",
                arguments=fields.get("arguments") or "",
            )
        )
    return calls


@dataclass(slots=True)
class StreamEvent:
    """One piece of a streamed answer: text and/or tool call pieces, or (on the last event) the finish
    reason and usage."""

    text: str = ""
    model: str = ""
    finish_reason: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    last: bool = False
    tool_calls: list[ToolCallPiece] = field(default_factory=list)


@dataclass(slots=True)
class TokenCounts:
    """Tokens per text, in order, and the model's context length (0 when the server does not say)."""

    counts: list[int]
    max_model_len: int


TokenizerKind = Literal["vllm", "llama.cpp"]
# Where each kind of server counts tokens (relative to the server's root) and the body it expects.
_TOKENIZER_PATHS: dict[TokenizerKind, str] = {"vllm": "tokenize", "llama.cpp": "extras/tokenize/count"}


def _tokenize_body(kind: TokenizerKind, model: str, text: str) -> dict[str, Any]:
    if kind == "vllm":
        # Plain text, as the contract says: no BOS or other special tokens added.
        return {"model": model, "prompt": text, "add_special_tokens": False}
    return {"model": model, "input": text}


class _NoSuchEndpoint(Exception):
    """The server has no route there (404/405 without an OpenAI error object, or not the expected answer)."""


@dataclass(slots=True)
class ReplicaLoad:
    """What a model server reports of its own load on /metrics."""

    waiting: float = 0.0
    # 0..1: the share of the KV cache in use (near 1, vLLM preempts requests).
    kv_cache_usage: float = 0.0


def read_load(text: str) -> ReplicaLoad | None:
    """The load in a Prometheus text page, or None when it has none of vLLM's load gauges."""
    # Only the few lines of interest go to the parser: vLLM's page is mostly histograms (tens of KB per
    # model), read every second per replica on the event loop that serves the requests.
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_LOAD_METRICS))
    load, found = ReplicaLoad(), False
    try:
        for family in text_string_to_metric_families(wanted):
            for sample in family.samples:
                if sample.name == WAITING_METRIC:
                    load.waiting += sample.value
                    found = True
                elif sample.name in KV_CACHE_METRICS:
                    load.kv_cache_usage = max(load.kv_cache_usage, sample.value)
                    found = True
    except ValueError:
        return None
    return load if found else None


class Upstream:
    """One pooled HTTP client session to one model server, shared by all calls and closed on shutdown.

    `url` is the server's base URL (with /v1); without it, GENAI_ADAPTER_UPSTREAM_URL. `host` is the
    name the server answers to when `url` holds one of its addresses instead (a name that resolves to
    several replicas): it goes in the Host header and, over https, in the TLS SNI and certificate check.

    aiohttp rather than httpx: per request it costs several times less CPU (httpx's layers of anyio
    streams, cancel scopes and per-connection pool checks were a third of the adapter's CPU), and its
    pool takes a free connection in constant time, so one pool holds all max_connections.
    """

    def __init__(self, settings: AdapterSettings, url: str | None = None, host: str | None = None) -> None:
        url = url or settings.upstream_url
        headers = {"Accept": "application/json"}
        if settings.upstream_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.upstream_api_key.get_secret_value()}"
        # aiohttp connects to the URL's address but names (and checks) this host in the TLS handshake.
        self._sni: str | None = None
        if host:
            headers["Host"] = host
            self._sni = URL(f"http://{host}").host
        self._base = URL(url + "/")
        # The server's root, where tokenizer endpoints live: the upstream URL without its /v1.
        self._root = URL((url[: -len("/v1")] if url.endswith("/v1") else url) + "/")
        # Every path's URL joined once, not at every request.
        self._urls: dict[tuple[bool, str], URL] = {}
        self._retries = settings.retries
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=settings.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE_EXPIRY_S
            ),
            # No byte for read_timeout_s (vLLM sends nothing until the first token) fails the call. Waiting
            # for a free connection, and the whole call, are bounded by the total timeout and the caller's
            # deadline (`_budget`), as are writes: a request body is small.
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=None,
                sock_connect=settings.connect_timeout_s,
                sock_read=settings.read_timeout_s,
            ),
            # Nothing a server sets may follow one user's request into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._total_s = settings.total_timeout_s
        self._closed = False
        # Health checks on a connection of their own: behind a pool full of streams they would wait for a
        # free connection and time out, and a busy server would be taken for a dead one.
        self._checks = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=2, keepalive_timeout=KEEPALIVE_EXPIRY_S),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # Pages the server turned out not to have (404 from llama-cpp-python's server): not asked for again
        # until it comes back from an outage (`forget_missing_pages`), so that its log is not one line a
        # second of them.
        self._no_health_page = False
        self._no_metrics_page = False
        # Where a connection is opened to see whether it accepts one (after /health was a 404).
        self._address = (self._root.host, self._root.port)
        self._tokenizer: TokenizerKind | None = None
        # Event-loop time after which a server found to have no tokenizer is probed again.
        self._no_tokenizer_until = 0.0
        self._detect_lock = asyncio.Lock()
        # Context lengths from model cards, for servers whose tokenizer does not say it (llama.cpp).
        self._card_max_model_len: dict[str, int] = {}

    def _url(self, path: str, *, at_root: bool = False) -> URL:
        """`path` under the base URL (with /v1), or under the server's root."""
        key = (at_root, path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = (self._root if at_root else self._base).join(URL(path))
        return url

    async def _send(self, method: str, url: URL, payload: dict[str, Any] | None) -> aiohttp.ClientResponse:
        """The response to one request, once its status and headers are in.

        A connection that cannot be made is tried again up to GENAI_ADAPTER_RETRIES times (at once, then
        after 0.5 s, 1 s...): nothing was sent, so nothing can be doubled. Once connected, never again.
        """
        # The request id goes upstream as X-Request-Id: vLLM takes it as its own request id and logs it.
        rid = current_request_id.get()
        headers = {"X-Request-Id": rid} if rid else None
        failed = 0
        while True:
            try:
                return await self._session.request(
                    method, url, json=payload, headers=headers, server_hostname=self._sni
                )
            except _CONNECT_FAILURES as exc:
                if failed >= self._retries:
                    raise
                failed += 1
                logger.debug(
                    "connecting to the model server failed (%s); attempt %s of %s",
                    exc,
                    failed + 1,
                    self._retries + 1,
                )
                await asyncio.sleep(0 if failed == 1 else RETRY_BACKOFF_S * 2 ** (failed - 2))

    async def _fetch(self, method: str, url: URL, payload: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The status and whole body of one request."""
        response = await self._send(method, url, payload)
        try:
            body = await response.read()
        except BaseException:
            # Cut short: the connection is closed (the server stops working on it), never reused half-read.
            response.close()
            raise
        response.release()
        return response.status, body

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._session.close()
            await self._checks.close()

    def _budget(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self._total_s
        return max(0.0, min(self._total_s, time_remaining))

    async def probe(self, timeout_s: float) -> bool:
        """Whether the model server answers at all: GET /health at its root (vLLM: 200 while its engine
        runs, 5xx when it has failed). llama-cpp-python's server has no /health and answers 404, which is
        an answer. Not /v1/models: llama-cpp-python takes the model's lock for it, and a request waiting
        for that lock makes its server end the stream in progress early."""
        if self._no_health_page:
            return await self._accepts_connections(timeout_s)
        try:
            status, _ = await self._check("health", timeout_s)
        except (aiohttp.ClientError, OSError):  # TimeoutError is an OSError
            return False
        if status == 404:
            # From now on a connection it accepts is its answer (a hung process is caught by the requests'
            # own timeouts and the breaker).
            self._no_health_page = True
        return status < 500

    async def _check(self, page: str, timeout_s: float) -> tuple[int, str]:
        """GET a page at the server's root on the health checks' own connection: its status and text."""
        async with self._checks.get(
            self._url(page, at_root=True),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            server_hostname=self._sni,
        ) as response:
            return response.status, await response.text(errors="replace")

    async def _accepts_connections(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(*self._address)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def forget_missing_pages(self) -> None:
        """Ask for /health and /metrics again (the server came back: it may be another one now)."""
        self._no_health_page = self._no_metrics_page = False

    async def load(self, timeout_s: float) -> ReplicaLoad | None:
        """The server's own load from GET /metrics at its root (vLLM's), or None when it has no such page
        (llama.cpp's server) or cannot be asked now."""
        if self._no_metrics_page:
            return None
        try:
            status, text = await self._check("metrics", timeout_s)
        except (aiohttp.ClientError, OSError):
            return None
        if status != 200:
            self._no_metrics_page = status == 404
            return None
        return read_load(text)

    async def list_models(self, time_remaining: float | None) -> list[dict[str, Any]]:
        with _mapped_errors():
            async with asyncio.timeout(self._budget(time_remaining)):
                return await self._models()

    async def complete(
        self, path: str, payload: dict[str, Any], time_remaining: float | None
    ) -> dict[str, Any]:
        """POST `path` (chat/completions or completions) without streaming; return the response object."""
        with _mapped_errors():
            async with asyncio.timeout(self._budget(time_remaining)):
                return _json_body(*await self._fetch("POST", self._url(path), payload))

    async def stream(
        self, path: str, payload: dict[str, Any], time_remaining: float | None
    ) -> AsyncIterator[StreamEvent]:
        """POST `path` with stream=true and yield the text as it comes, then a last event.

        Chat chunks carry text in choices[].delta.content, completion chunks in choices[].text.

        The timeout is applied around each read rather than around the loop, because a timeout
        spanning `yield` would fire while the consumer, not this generator, is running. Closing this
        generator (the gRPC caller went away) closes the HTTP response, which makes vLLM abort the
        request and free its slot.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget(time_remaining)
        model = str(payload.get("model", ""))
        chat = path == CHAT_PATH
        with _mapped_errors():
            async with asyncio.timeout_at(deadline):
                response = await self._send("POST", self._url(path), payload)
            reusable = False
            try:
                if response.status >= 400:
                    async with asyncio.timeout_at(deadline):
                        body = await _read_capped(response.content)
                    raise UpstreamStatus(response.status, error_message(body))
                finish_reason = ""
                usage: dict[str, Any] = {}
                # Indices of the tool calls already named: later pieces of a call carry arguments only,
                # as the contract says, even from servers that repeat id and name (llama-cpp-python).
                named: set[int] = set()
                done = False
                reader = response.content
                events = _EventReader()
                # Read as the bytes come (one read is usually one event), not line by line: each read
                # costs a timeout of its own.
                while not done:
                    async with asyncio.timeout_at(deadline):
                        chunk = await reader.readany()
                    for event in events.feed(chunk) if chunk else events.end():
                        if event == b"[DONE]":
                            done = True
                            break
                        obj = _json_object(event)
                        if "error" in obj or obj.get("object") == "error":
                            # vLLM reports a failure after the 200 as one more event.
                            raise UpstreamStatus(_status_of_error_event(obj), error_message(event))
                        model = obj.get("model") or model
                        for choice in obj.get("choices") or ():
                            if not isinstance(choice, dict):
                                raise BadUpstreamResponse("a stream choice that is not an object")
                            calls: list[ToolCallPiece] = []
                            if chat:
                                delta = choice.get("delta")
                                if not isinstance(delta, dict):
                                    raise BadUpstreamResponse("a stream choice without a delta object")
                                text = delta.get("content")
                                if "tool_calls" in delta:
                                    calls = _announce_once(
                                        read_tool_calls(delta["tool_calls"], streamed=True), named
                                    )
                            else:
                                text = choice.get("text")
                            if text or calls:
                                yield StreamEvent(text=text or "", model=model, tool_calls=calls)
                            if choice.get("finish_reason"):
                                finish_reason = choice["finish_reason"]
                        if isinstance(obj.get("usage"), dict):
                            usage = obj["usage"]
                    if not chunk:
                        break
                if not done and not finish_reason:
                    UPSTREAM_ERRORS.labels("connection_lost").inc()
                    raise UpstreamError(grpc.StatusCode.UNAVAILABLE, "model server ended the stream early")
                if done:
                    reusable = await _drain(reader, min(deadline, loop.time() + DRAIN_AFTER_DONE_S))
            finally:
                if reusable:
                    response.release()
                else:
                    # Cut short (the caller went away, a failure): closing the connection makes vLLM abort
                    # the request and free its slot; a connection is never reused half-read.
                    response.close()
        yield StreamEvent(model=model, finish_reason=finish_reason, usage=usage, last=True)

    async def count_tokens(self, model: str, texts: list[str], time_remaining: float | None) -> TokenCounts:
        """Count each text with the server's own tokenizer, several at once.

        The first text also finds out, once, which tokenizer endpoint the server has. With no texts,
        an empty one is counted so that the context length is still learnt.
        """
        with _mapped_errors():
            async with asyncio.timeout(self._budget(time_remaining)):
                try:
                    return await self._count_tokens(model, texts or [""], bool(texts))
                except _NoSuchEndpoint:
                    # The server was replaced by one of another kind between two calls: find out again.
                    self._tokenizer = None
                try:
                    return await self._count_tokens(model, texts or [""], bool(texts))
                except _NoSuchEndpoint as exc:
                    raise BadUpstreamResponse(
                        "the tokenizer endpoint answers some texts but not others"
                    ) from exc

    async def _count_tokens(self, model: str, texts: list[str], keep: bool) -> TokenCounts:
        kind, first = await self._tokenizer_kind(model, texts[0])
        gate = asyncio.Semaphore(COUNT_CONCURRENCY)

        async def one(text: str) -> tuple[int, int]:
            async with gate:
                return await self._count_one(kind, model, text)

        tasks = [asyncio.ensure_future(one(t)) for t in texts[1:]]
        try:
            # The first failure fails the call; the counts still running are then of no use.
            rest = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        answers = [first, *rest]
        max_model_len = max(m for _, m in answers)
        if kind == "llama.cpp":
            max_model_len = await self._model_card_max_len(model)
        return TokenCounts([c for c, _ in answers] if keep else [], max_model_len)

    async def _tokenizer_kind(self, model: str, text: str) -> tuple[TokenizerKind, tuple[int, int]]:
        """The server's tokenizer (found on first use) and the count of `text` by it."""
        if self._tokenizer is not None:
            try:
                return self._tokenizer, await self._count_one(self._tokenizer, model, text)
            except _NoSuchEndpoint:
                self._tokenizer = None
        async with self._detect_lock:
            loop = asyncio.get_running_loop()
            if self._tokenizer is None and loop.time() < self._no_tokenizer_until:
                raise UpstreamError(grpc.StatusCode.UNIMPLEMENTED, NO_TOKENIZER_MESSAGE)
            kinds: tuple[TokenizerKind, ...] = (
                (self._tokenizer,) if self._tokenizer is not None else ("vllm", "llama.cpp")
            )
            for kind in kinds:
                try:
                    answer = await self._count_one(kind, model, text)
                except _NoSuchEndpoint:
                    continue
                if self._tokenizer != kind:
                    logger.info("the model server counts tokens %s's way", kind)
                self._tokenizer = kind
                return kind, answer
            self._tokenizer = None
            self._no_tokenizer_until = loop.time() + NO_TOKENIZER_RECHECK_S
            logger.warning("the model server has no tokenizer endpoint; CountTokens is unimplemented")
            raise UpstreamError(grpc.StatusCode.UNIMPLEMENTED, NO_TOKENIZER_MESSAGE)

    async def _count_one(self, kind: TokenizerKind, model: str, text: str) -> tuple[int, int]:
        """One text's token count and the context length the answer gives (0 if none)."""
        status, body = await self._fetch(
            "POST", self._url(_TOKENIZER_PATHS[kind], at_root=True), _tokenize_body(kind, model, text)
        )
        if status in (404, 405) and not _is_openai_error(body):
            raise _NoSuchEndpoint(kind)
        obj = _json_body(status, body)
        count, max_model_len = obj.get("count"), obj.get("max_model_len", 0)
        if not _is_count(count) or not _is_count(max_model_len):
            # Another server's endpoint of the same name (llama.cpp's own /tokenize answers {"tokens"}).
            raise _NoSuchEndpoint(kind)
        return count, max_model_len

    async def _model_card_max_len(self, model: str) -> int:
        if model not in self._card_max_model_len:
            cards = await self._models()
            card = next((m for m in cards if m["id"] == model), {})
            value = card.get("max_model_len")
            self._card_max_model_len[model] = value if _is_count(value) else 0
        return self._card_max_model_len[model]

    async def _models(self) -> list[dict[str, Any]]:
        data = _json_body(*await self._fetch("GET", self._url("models"))).get("data")
        if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
        ):
            raise BadUpstreamResponse("/models has no list of models with ids")
        return data


def _announce_once(pieces: list[ToolCallPiece], named: set[int]) -> list[ToolCallPiece]:
    """The pieces with id, type and name kept on each call's first piece only; empty pieces dropped."""
    kept: list[ToolCallPiece] = []
    for piece in pieces:
        if piece.index in named:
            piece.id = piece.type = piece.name = ""
        elif piece.id or piece.type or piece.name:
            named.add(piece.index)
        if piece.id or piece.type or piece.name or piece.arguments:
            kept.append(piece)
    return kept


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_openai_error(body: bytes) -> bool:
    """Whether an error answer is the server's own (an unknown model), not a missing route's."""
    try:
        obj = json.loads(body[:MAX_ERROR_BODY])
    except ValueError:
        return False
    return isinstance(obj, dict) and ("error" in obj or obj.get("object") == "error")


class _EventReader:
    """The data of server-sent events, from a body read in pieces of any size.

    Lines end with \\n, \\r\\n or \\r; a blank line (or the end of the body) completes an event, whose data
    lines are joined with \\n. Comments (":..."), event:, id: and retry: lines carry nothing used here.
    """

    __slots__ = ("_rest", "_data")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of each event that `chunk` completes."""
        text = self._rest + chunk if self._rest else chunk
        held = b""
        if b"\r" in text:
            if text.endswith(b"\r"):
                # Maybe the first half of \r\n: decided by the next piece.
                text, held = text[:-1], b"\r"
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        self._rest = lines.pop() + held
        return self._events(lines)

    def end(self) -> list[bytes]:
        """The data of the event that the end of the body completes, if any."""
        rest, self._rest = self._rest.rstrip(b"\r"), b""
        return self._events([rest, b""] if rest else [b""])

    def _events(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        for line in lines:
            if line:
                if line.startswith(b"data:"):
                    value = line[5:]
                    self._data.append(value[1:] if value.startswith(b" ") else value)
            elif self._data:
                events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                self._data = []
        return events


async def _drain(reader: aiohttp.StreamReader, deadline: float) -> bool:
    """Read the end of the body after [DONE], so that the connection can go back to the pool; whether it
    could (after a short wait at most)."""
    if reader.at_eof():
        return True
    try:
        async with asyncio.timeout_at(deadline):
            while await reader.readany():
                pass
    except (TimeoutError, *_CONNECTION_FAILURES):
        # The answer is complete; a connection that cannot be reused is simply closed.
        return False
    return True


async def _read_capped(reader: aiohttp.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        chunk = await reader.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ERROR_BODY]


def _json_object(raw: bytes) -> dict[str, Any]:
    # orjson: a stream is one parse per token. What it refuses but Python's parser reads (NaN, Infinity)
    # is read as before.
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BadUpstreamResponse(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadUpstreamResponse("not a JSON object")
    return obj


def _json_body(status: int, body: bytes) -> dict[str, Any]:
    if status >= 400:
        raise UpstreamStatus(status, error_message(body[:MAX_ERROR_BODY]))
    return _json_object(body)
