"""The FastAPI application: long-lived clients in the lifespan, routers, errors, the web page."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import Gauge

from genai_common.metrics import report_certificate, serve_metrics
from genai_common.redis_guard import RedisGuard
from genai_gateway.backends import Backends
from genai_gateway.cache import AnswerCache, cache_redis_guard
from genai_gateway.errors import install_handlers
from genai_gateway.flights import SharedFlights
from genai_gateway.grpc_api import start_server
from genai_gateway.middleware import MetricsMiddleware, RequestIdMiddleware
from genai_gateway.openapi import install as install_openapi
from genai_gateway.pipeline import AskPipeline
from genai_gateway.quota import Quotas
from genai_gateway.routers import admin, ask, auth, dialogs, health, history, keys, openai, telegram, users
from genai_gateway.settings import GatewaySettings
from genai_gateway.similar import SimilarLayer
from genai_gateway.spool import HistoryRecorder

STATIC_DIR = resources.files("genai_gateway") / "static"

# States read at scrape time from the objects of the running app.
FEED_HEARD = Gauge(
    "genai_gateway_auth_feed_heard",
    "1 while auth's credential change feed is heard (Authenticate answers may be cached), else 0",
)
REDIS_POLICY_ACTIVE = Gauge(
    "genai_gateway_redis_failure_policy_active",
    "1 while Redis is unavailable and the failure policy decides (open: per-process limits, no cache; "
    "closed: 503), else 0",
    ["policy"],
)


def create_app(settings: GatewaySettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backends = Backends(settings)
        guard = RedisGuard(settings.redis_cooldown_s)
        app.state.redis_guard = guard
        FEED_HEARD.set_function(lambda: float(backends.credentials.trusted))
        REDIS_POLICY_ACTIVE.labels(settings.redis_failure_policy).set_function(lambda: float(guard.degraded))
        # The public certificate nginx serves, and the gateway's own for mTLS to the internal services.
        for name, path in (("public", settings.tls_cert_file), ("internal", settings.mtls_cert_file)):
            if path:
                report_certificate(name, path)
        metrics_server = serve_metrics(settings.metrics_port, settings.host)
        recorder = HistoryRecorder(
            backends.history, backends.redis, guard=guard, max_spooled=settings.spool_max_exchanges
        )
        # Reads of history wait for the answers journaled before them.
        backends.history.before_read = recorder.flush
        app.state.settings = settings
        app.state.backends = backends
        app.state.recorder = recorder
        quotas = Quotas(
            backends.redis,
            guard,
            {"user": settings.limits_user, "admin": settings.limits_admin},
            # A slot outlives the longest generation, then frees itself (a gateway that died).
            slot_ttl_s=settings.generate_timeout_s + 30,
            failure_policy=settings.redis_failure_policy,
        )
        cache_guard = cache_redis_guard(guard, separate=backends.cache_redis is not backends.redis)
        app.state.cache = cache = AnswerCache(
            backends.cache_redis,
            settings.cache_ttl_s,
            settings.cache_enabled,
            guard=cache_guard,
            max_entry_chars=settings.cache_max_entry_chars,
        )
        similar = None
        if settings.similar_enabled and settings.cache_enabled:
            similar = SimilarLayer(
                backends.cache_redis,
                settings.cache_ttl_s,
                threshold=settings.similar_threshold,
                word_threshold=settings.similar_word_threshold,
                guard=cache_guard,
                # The admin's settings for the layer are state: the state Redis's.
                settings_client=backends.redis,
                settings_guard=guard,
            )
            similar.embedder.threads = settings.similar_threads
            # The model loads in a thread while the gateway starts serving; until then the layer is bypassed.
            similar.start()
        app.state.similar = similar
        shared = None
        if settings.shared_flights:
            shared = SharedFlights(
                backends.redis,
                backends.blocking_redis,
                guard,
                lease_s=settings.flight_lease_s,
                follow_limit_s=settings.generate_timeout_s + 30,
            )
        app.state.pipeline = pipeline = AskPipeline(
            settings, backends.model, backends.history, cache, recorder, quotas, similar, shared
        )
        drain = asyncio.create_task(recorder.drain_forever(settings.spool_drain_interval_s))
        follow = None
        if backends.credentials.enabled:
            follow = asyncio.create_task(backends.auth.follow_changes())
        grpc_server = None
        if settings.grpc_port:
            grpc_server = await start_server(
                pipeline,
                backends.auth,
                settings.host,
                settings.grpc_port,
                reflection=settings.grpc_reflection,
            )
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(5)
            for task in (drain, follow):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await pipeline.drain()
            if similar is not None:
                similar.close()
            await backends.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()

    app = FastAPI(
        title="On-Premise GenAI API",
        version="1.0",
        description="Multi-user access to a local LLM: web chat, HTTP API and gRPC.",
        lifespan=lifespan,
        docs_url="/docs" if settings.public_api_docs else None,
        redoc_url="/redoc" if settings.public_api_docs else None,
        openapi_url="/openapi.json" if settings.public_api_docs else None,
        # FastAPI's own OpenTelemetry: the service reports through Prometheus and its logs, and with it on
        # every request looks the global providers up (environment reads) only to find none configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    # The last added runs first: the request id is set before the metrics middleware logs the request.
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_handlers(app)
    # Routes are matched in this order, each router's at some cost per request: the asking routes, which
    # take most requests, first. No path of theirs overlaps another router's.
    for router in (
        ask.router,
        openai.router,
        auth.router,
        # Before history: its /{conversation_id} would take /search and /export.
        dialogs.router,
        history.router,
        keys.router,
        telegram.router,
        users.router,
        admin.router,
        health.router,
    ):
        app.include_router(router)
    install_openapi(app, settings)

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

    return app
