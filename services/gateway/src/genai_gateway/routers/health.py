"""GET /health (status of each dependency) and GET /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from genai_gateway.errors import ApiError

router = APIRouter(tags=["health"])

# Without these the gateway cannot answer anyone; without the others it answers, degraded.
_CRITICAL = ("auth", "inference_adapter", "model")


async def _model(request: Request) -> str:
    try:
        await request.app.state.backends.model.list_models(timeout_s=2.0)
    except ApiError as exc:
        return f"down: {exc.grpc_code.name.lower()}"
    return "ok"


async def _redis(request: Request) -> str:
    guard = request.app.state.redis_guard
    if not guard.available:
        return "down: cooling off after a failure"
    try:
        await request.app.state.backends.redis.ping()
    except (RedisError, OSError) as exc:
        guard.failed(exc)
        return f"down: {type(exc).__name__}"
    guard.succeeded()
    return "ok"


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    backends = request.app.state.backends
    names = ("auth", "history", "inference_adapter", "model", "redis")
    results = await asyncio.gather(
        backends.auth.health(),
        backends.history.health(),
        backends.model.health(),
        _model(request),
        _redis(request),
    )
    dependencies = dict(zip(names, results, strict=True))
    if any(dependencies[name] != "ok" for name in _CRITICAL):
        status, code = "down", 503
    elif any(value != "ok" for value in results):
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    spooled = await request.app.state.recorder.pending()
    body = {
        "status": status,
        "model": request.app.state.pipeline.known_model or None,
        "dependencies": dependencies,
        "history_spool": spooled,
        # What a Redis outage means here: limits per process ("open") or 503s ("closed"), no cache.
        "redis_failure_policy": request.app.state.settings.redis_failure_policy,
        # Whether token checks are answered from the gateway's cache (genai_gateway.credentials).
        "credential_cache": backends.credentials.state,
    }
    return JSONResponse(body, status_code=code)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
