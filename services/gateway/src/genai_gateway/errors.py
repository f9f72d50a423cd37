"""The gateway's one error type, the one place where internal gRPC failures become it, and the one error
shape of every HTTP answer.

An `ApiError` says what went wrong for the caller, whichever protocol it came through: the HTTP routes
answer its `status`, the public gRPC API its `grpc_code`. An error that came from an internal service
keeps that service's gRPC code, so a gRPC caller gets it unchanged (a full model queue stays
RESOURCE_EXHAUSTED, where HTTP says 503) instead of a round trip through an HTTP status.

Every error body is {"error": {"message", "type", "code"}, "detail": message}: the "error" object is the
OpenAI shape that SDKs read, "detail" is what FastAPI clients (and the seeds' page) read.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from genai_common.request_id import current_request_id

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    501: "not_implemented",
    503: "service_unavailable",
    504: "timeout_error",
}


# The gRPC answer to each HTTP status, for errors raised in the gateway itself.
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ApiError(Exception):
    """An expected failure, with a message meant for the caller.

    `status` is the HTTP answer; `grpc_code` the gRPC one (derived from the status unless given, as it is
    for failures of internal services); `headers` carries Retry-After and the rate-limit headers.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        grpc_code: grpc.StatusCode | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.grpc_code = grpc_code or _HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL)


# (HTTP status, fallback message) per gRPC code; the service's own message is used when it has one.
_GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid request"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid request"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid request"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "not authenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already exists"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "too many requests"),
    grpc.StatusCode.UNAVAILABLE: (503, "a backend service is unavailable; try again shortly"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "the request took too long; try again"),
    grpc.StatusCode.CANCELLED: (503, "the request was cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not supported by this server"),
}


# Trailing metadata of an internal service's failure whose details are meant for the caller as they are.
CALLER_MESSAGE = ("genai-caller-message", "1")


# How long a caller is told to wait after a dependency failure when the service gave no Retry-After.
RETRY_AFTER_S = 5


def from_grpc(
    exc: grpc.aio.AioRpcError, what: str, *, busy_status: int = 429, late_status: int = 504
) -> ApiError:
    """Translate a failed internal call; `what` names the dependency for messages about outages.

    `busy_status` is the answer to RESOURCE_EXHAUSTED: 429 where it means the caller asked too much
    (login attempts), 503 where the service as a whole is busy (the model's queue is full).
    `late_status` is the answer to DEADLINE_EXCEEDED: 504 where the request itself took too long (a
    generation), 503 where a service that answers in milliseconds did not (it, or its database, hangs).
    """
    code = exc.code()
    status, fallback = _GRPC_TO_HTTP.get(code, (500, "internal error"))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        status = busy_status
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        status = late_status
    details = exc.details() or ""
    if status == 500:
        logger.error("%s failed: %s %s", what, code.name, details)
        return ApiError(500, "internal error", grpc_code=grpc.StatusCode.INTERNAL)
    trailers = tuple(exc.trailing_metadata() or ())
    if code == grpc.StatusCode.UNAVAILABLE and CALLER_MESSAGE in trailers:
        # A service that is up says what it cannot reach (auth: the directory), in words for the caller.
        message = details
    elif code == grpc.StatusCode.UNAVAILABLE:
        # Details here are often transport noise ("failed to connect to all addresses ..."): say what is down.
        logger.warning("%s unavailable: %s", what, details)
        message = f"{what} is unavailable; try again shortly"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{what} did not answer in time; try again" + (" shortly" if status == 503 else "")
    else:
        message = details or fallback
    headers: dict[str, str] = {}
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        for key, value in trailers:
            if key == "retry-after":
                headers["Retry-After"] = str(value)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return ApiError(status, message, headers=headers, grpc_code=code)


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """The one error shape; with the request id, which ops find in every service's logs."""
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "error"),
            "param": None,
            "code": code or str(status),
        },
        "detail": message,
    }
    rid = current_request_id.get()
    if rid:
        body["request_id"] = rid
    return body


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    if status == 503 and not any(key.lower() == "retry-after" for key in headers or {}):
        # Every 503 says when to come back, whichever dependency it is about.
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        location = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{location}: {err.get('msg')}" if location else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(UnicodeEncodeError)
    async def not_unicode(_: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # JSON may escape a lone surrogate ("\ud800"), which Python decodes into a str that is not Unicode
        # text: nothing can encode it (a hash, a gRPC message, a database row), so it is bad input.
        if exc.reason == "surrogates not allowed":
            return error_response(
                422,
                "invalid request: the text holds a lone surrogate (\\ud800-\\udfff), which is not Unicode",
            )
        logger.exception("unhandled error")
        return error_response(500, "internal error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, "internal error")
