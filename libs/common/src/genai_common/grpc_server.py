"""Running a grpc.aio service: interceptors, health, metrics, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Counter, Gauge, Histogram

from genai_common import request_id
from genai_common.metrics import LATENCY_BUCKETS, report_certificate, serve_metrics
from genai_common.mtls import CallerPolicy, MtlsFiles, caller_identity, server_credentials

logger = logging.getLogger(__name__)

# RED per gRPC method, for every service that runs `serve` (one interceptor: `ServiceInterceptor`).
# `method` is the RPC's name (a fixed set per service), `code` its gRPC status name.
RPC_TOTAL = Counter(
    "genai_grpc_server_handled_total", "RPCs handled, by method and status", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "genai_grpc_server_handling_seconds",
    "RPC handling time (a stream's whole length), by method",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
# Each client connection is closed (GOAWAY) after this long, give or take 10 %: reconnecting makes the
# client resolve the service's name again and so find replicas added since (genai_common.grpc_client).
# Calls in flight finish on the old connection (no grace limit), new ones go to the new connections.
MAX_CONNECTION_AGE_MS = 120_000
# Health checks come every few seconds from probes and carry no request: counted, not logged.
_QUIET_METHODS = frozenset({"Check", "Watch"})
# How often the health service's dependency statuses are brought up to date.
DEPENDENCY_CHECK_S = 0.5
RPC_IN_FLIGHT = Gauge("genai_grpc_server_in_flight", "RPCs being handled now, by method", ["method"])


# Trailing metadata that tells the gateway an UNAVAILABLE's details are meant for the caller as they are.
CALLER_MESSAGE = ("genai-caller-message", "1")
# What a caller is told to wait before trying again after a dependency failure.
RETRY_AFTER_S = 5
# Trailing metadata that tells a gRPC client not to retry this UNAVAILABLE on another replica (gRFC A6
# pushback): the dependency that failed (PostgreSQL) is the same for every replica.
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


@dataclass(frozen=True)
class DependencyErrors:
    """Errors of a dependency that a retry later fixes (PostgreSQL down or hung), answered UNAVAILABLE with
    `message` (which names what is unavailable) instead of INTERNAL; `on_error` hears each one."""

    errors: tuple[type[BaseException], ...]
    message: str
    on_error: Callable[[BaseException], None] | None = None


@dataclass(frozen=True)
class _Call:
    """What every RPC of a server is wrapped with: who may call it, and how a dependency's outage shows."""

    path: str  # "/package.Service/Method"
    dependency: DependencyErrors | None
    policy: CallerPolicy | None

    @property
    def method(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@contextlib.asynccontextmanager
async def _observed(call: _Call, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """One RPC's bookkeeping: its request id, count and time, and the answer to an unexpected error."""
    method, dependency = call.method, call.dependency
    token = request_id.current_request_id.set(_incoming_request_id(context))
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    in_flight = RPC_IN_FLIGHT.labels(method)
    in_flight.inc()
    try:
        if call.policy is not None:
            await _authorize(call, context)
        yield
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except asyncio.CancelledError:
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        if context.done():
            # The call already ended (its deadline passed, or the caller left) before this servicer
            # answered: there is nobody to tell, and aborting now would fail again.
            code = grpc.StatusCode.CANCELLED
            logger.info("%s ended before it could answer", method)
            raise asyncio.CancelledError from None
        exc = sys.exc_info()[1]
        if dependency is not None and isinstance(exc, dependency.errors):
            code = grpc.StatusCode.UNAVAILABLE
            logger.warning("%s: dependency unavailable (%s)", method, type(exc).__name__)
            if dependency.on_error is not None:
                dependency.on_error(exc)  # type: ignore[arg-type]
            await context.abort(
                code,
                dependency.message,
                trailing_metadata=(("retry-after", str(RETRY_AFTER_S)), CALLER_MESSAGE, NO_RETRY),
            )
        code = grpc.StatusCode.INTERNAL
        logger.exception("unhandled error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    finally:
        in_flight.dec()
        elapsed = time.perf_counter() - started
        RPC_TOTAL.labels(method, code.name).inc()
        RPC_SECONDS.labels(method).observe(elapsed)
        if method not in _QUIET_METHODS:
            # The service's access log: one line per call, with the request id (JSON logging adds it).
            logger.info(
                "rpc %s %s %.1f ms",
                method,
                code.name,
                elapsed * 1000,
                extra={"rpc": method, "code": code.name},
            )
        request_id.current_request_id.reset(token)


async def _authorize(call: _Call, context: grpc.aio.ServicerContext) -> None:
    """Refuse a caller whose certificate's identity may not call this method (mTLS servers only)."""
    identity = caller_identity(context)
    if identity is None:
        logger.warning("%s refused: the caller presented no certificate", call.method)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    assert call.policy is not None and identity is not None
    if not call.policy.allows(call.path, identity):
        logger.warning("%s refused: %r may not call it", call.method, identity, extra={"caller": identity})
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{identity!r} may not call {call.method}")


def _wrap_unary(call: _Call, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(req: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _observed(call, context):
            return await behavior(req, context)

    return wrapper


def _wrap_stream(call: _Call, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(req: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _observed(call, context):
            async for item in behavior(req, context):
                yield item

    return wrapper


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == request_id.METADATA_KEY:
            return request_id.sanitize(value if isinstance(value, str) else value.decode())
    return request_id.new_request_id()


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Sets the request id, counts and times each RPC, and turns unexpected errors into INTERNAL.

    Expected failures are raised by servicers with `await context.abort(code, message)`; a dependency's
    outage (`DependencyErrors`) is answered UNAVAILABLE with a message that names it; anything else is
    logged here with its traceback and answered with a generic message. With a `policy` (mTLS servers),
    a caller whose certificate's identity may not call a method is refused before it runs; a method the
    server cannot wrap (client-streaming) is then refused to everyone rather than left unchecked.
    """

    def __init__(
        self, dependency: DependencyErrors | None = None, policy: CallerPolicy | None = None
    ) -> None:
        self._dependency = dependency
        self._policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        call = _Call(handler_call_details.method, self._dependency, self._policy)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(call, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(call, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if self._policy is not None:
            return None  # UNIMPLEMENTED: nothing here is client-streaming, and nothing passes unchecked
        return handler


async def _report_dependencies(
    health_servicer: health.aio.HealthServicer, dependencies: Mapping[str, Callable[[], bool]]
) -> None:
    """Keep each dependency's health status current (checked every DEPENDENCY_CHECK_S)."""
    while True:
        for dependency, usable in dependencies.items():
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if usable()
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await health_servicer.set(dependency, status)
        await asyncio.sleep(DEPENDENCY_CHECK_S)


async def serve(
    *,
    name: str,
    listen: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: list[str],
    metrics_port: int = 0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_draining: Callable[[], None] | None = None,
    grace_s: float = 10.0,
    dependency_errors: DependencyErrors | None = None,
    dependencies: Mapping[str, Callable[[], bool]] | None = None,
    mtls: MtlsFiles | None = None,
    callers: Mapping[str, Iterable[str]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, let RPCs in flight finish, and clean up.

    `on_draining` runs first, for what must not hold up the shutdown: ending streams that never finish
    by themselves. `on_stop` runs once the RPCs are done.

    `dependencies` (name -> is it usable now) are reported by the health service under their own names
    (e.g. "postgres": SERVING or NOT_SERVING), beside the server's own status (""), which stays SERVING
    while the process serves: a service whose database is down still answers what it can, and restarting
    it would not bring the database back.

    With `mtls`, the server speaks only TLS, asks every caller for a certificate of the internal CA, and
    lets each identity call only what `callers` allows (see `genai_common.mtls.CallerPolicy`; the health
    service is open to every identity of the CA); the certificate's expiry date is the metric
    genai_tls_certificate_expiry_timestamp_seconds{certificate="internal"}. Without it (dev mode only,
    `genai_common.mtls.files_from_settings`), plaintext and no caller checks.
    """
    policy = CallerPolicy(callers or {}) if mtls is not None else None
    server = grpc.aio.server(
        interceptors=[ServiceInterceptor(dependency_errors, policy)],
        options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if mtls is not None:
        port = server.add_secure_port(listen, server_credentials(mtls))
        report_certificate("internal", str(mtls.cert))
    else:
        logger.warning(
            "%s listens in plaintext and believes every caller (dev mode without MTLS files)", name
        )
        port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"{name}: cannot listen on {listen}")
    serve_metrics(metrics_port, listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0")
    await server.start()
    for service in [*service_names, ""]:
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reporting = None
    if dependencies:
        reporting = asyncio.create_task(_report_dependencies(health_servicer, dependencies))
    logger.info("%s listening on %s", name, listen)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("%s stopping", name)
    if on_draining is not None:
        on_draining()
    if reporting is not None:
        reporting.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)
    if on_stop is not None:
        await on_stop()
