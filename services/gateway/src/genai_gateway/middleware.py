"""Request ids and RED metrics for every HTTP request, as plain ASGI middleware.

Plain ASGI rather than BaseHTTPMiddleware, which would buffer streamed responses.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genai_common.metrics import LATENCY_BUCKETS
from genai_common.request_id import current_request_id, sanitize

logger = logging.getLogger(__name__)

# `route` is the route's template ("/api/v1/history/{conversation_id}"), never the path itself, so ids in
# paths add no series; requests that match no route share "unmatched".
HTTP_REQUESTS = Counter(
    "genai_http_requests_total",
    "HTTP requests answered, by route, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "genai_http_request_duration_seconds",
    "Time to answer an HTTP request (a stream until its last byte), by route and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("genai_http_requests_in_flight", "HTTP requests being answered now")
# Methods outside this set (anything a client may send) are counted as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes: counted, not written to the log.
_QUIET_ROUTES = frozenset({"/health", "/metrics"})
# The metrics' children by (route, method, status): `labels()` takes a lock and builds a key on every call.
# Bounded like the metrics themselves (route templates, a few methods and statuses).
_Children = tuple[Counter, Histogram]
_children: dict[tuple[str, str, int], _Children] = {}


def _observed(route: str, method: str, status: int) -> _Children:
    children = _children.get((route, method, status))
    if children is None:
        children = _children[(route, method, status)] = (
            HTTP_REQUESTS.labels(route, method, str(status)),
            HTTP_SECONDS.labels(route, method),
        )
    return children


class RequestIdMiddleware:
    """Takes nginx's X-Request-ID (or makes one), sets it for logs and gRPC calls, and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = sanitize(incoming)
        token = current_request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, and writes one access log line for it.

    Runs inside `RequestIdMiddleware`, so the log line carries the request id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            HTTP_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = _route(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            requests, seconds = _observed(route, method, status)
            requests.inc()
            seconds.observe(elapsed)
            if route not in _QUIET_ROUTES:
                logger.info(
                    "%s %s %s %.1f ms",
                    method,
                    route,
                    status,
                    elapsed * 1000,
                    extra={"route": route, "method": method, "status": status},
                )
