"""GET /health (up or down for anyone, each dependency's status for admins) and GET /metrics (Prometheus).

`status` says what users can still do: "down" (503) when nobody can get an answer (auth, the adapter or
the model is down, or Redis is down under the "closed" failure policy), "degraded" (200) when answers go
on but something is missing (history, Redis under "open", PostgreSQL as seen by auth or history), else
"ok". `reasons` says, per failing dependency, what users see; docs/operations.md has the same table with
what to do. The whole report is built by `report()`; GET /health shows it all to an admin (an admin's
access token or admin-scope API key) and only `status` to everyone else, since which parts run, which
model and why something fails is a map of the inside for whoever can reach the public address.

Who the caller is never turns /health into an error: no credential, an invalid or expired one, a user's,
or one that auth cannot check now (auth down or hung) all get the public answer. An anonymous request
costs auth nothing, so an auth outage is reported as `down` at once; a credential is checked while the
report is made, so the answer takes no longer than the slower of the two (auth's deadline, 3 s).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from redis.exceptions import RedisError

from genai_gateway.errors import ApiError
from genai_gateway.security import admin_or_anonymous

router = APIRouter(tags=["health"])

DEPENDENCY_UP = Gauge(
    "genai_gateway_dependency_up",
    "1 while the dependency answered the gateway's last health check (GET /health), else 0",
    ["dependency"],
)

# What users see while each dependency fails (the operations guide's table says what to do).
REASONS = {
    "auth": "the authentication service is down: nobody can sign in or be recognised",
    "inference_adapter": "the model service (inference adapter) is down: no answers",
    "model": "the model server is down: no answers",
    "history": "the history service is down: history cannot be read; answers go on and are written to "
    "history when it is back",
    "postgres_auth": "PostgreSQL does not answer the authentication service: new sign-ins and account "
    "changes are refused; signed-in sessions continue",
    "postgres_history": "PostgreSQL does not answer the history service: history cannot be read; answers "
    "go on and are written to history when it is back",
    "redis": "Redis is down: limits are counted per gateway process and the answer cache is off",
}
REDIS_CLOSED = "Redis is down and its failure policy is closed: requests are refused"
# Without these nobody gets an answer; without the others answers go on, degraded.
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


async def report(request: Request) -> tuple[dict[str, Any], int]:
    """The health report and its HTTP status."""
    backends = request.app.state.backends
    names = ("auth", "history", "inference_adapter", "model", "redis", "postgres_auth", "postgres_history")
    results = await asyncio.gather(
        backends.auth.health(),
        backends.history.health(),
        backends.model.health(),
        _model(request),
        _redis(request),
        backends.auth.dependency_health("postgres"),
        backends.history.dependency_health("postgres"),
    )
    dependencies = dict(zip(names, results, strict=True))
    # "unknown": the service could not say (it is down itself, which is reported on its own line).
    failing = [name for name, value in dependencies.items() if value.startswith("down")]
    redis_closed = "redis" in failing and request.app.state.settings.redis_failure_policy == "closed"
    if redis_closed or any(name in failing for name in _CRITICAL):
        status, code = "down", 503
    elif failing:
        status, code = "degraded", 200
    else:
        status, code = "ok", 200
    for name, value in dependencies.items():
        DEPENDENCY_UP.labels(name).set(0 if value.startswith("down") else 1)
    spooled = await request.app.state.recorder.pending()
    body = {
        "status": status,
        # What users cannot do now, one line per failing dependency.
        "reasons": [REDIS_CLOSED if name == "redis" and redis_closed else REASONS[name] for name in failing],
        "model": request.app.state.pipeline.known_model or None,
        "dependencies": dependencies,
        "history_spool": spooled,
        # What a Redis outage means here: limits per process ("open") or 503s ("closed"), no cache.
        "redis_failure_policy": request.app.state.settings.redis_failure_policy,
        # Whether token checks are answered from the gateway's cache (genai_gateway.credentials).
        "credential_cache": backends.credentials.state,
    }
    return body, code


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Anyone: `{"status": "ok" | "degraded" | "down"}` only (503 when down). With an admin's access token
    or admin-scope API key: every dependency's status, `reasons` and the rest. A missing, invalid or
    non-admin credential is never refused here: it gets the status only."""
    (body, code), admin = await asyncio.gather(report(request), admin_or_anonymous(request))
    return JSONResponse(body if admin is not None else {"status": body["status"]}, status_code=code)


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
