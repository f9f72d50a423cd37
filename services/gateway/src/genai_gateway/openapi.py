"""The published OpenAPI document, made to say every answer a route really gives.

FastAPI documents what a route declares: its success, and a 422 in FastAPI's own HTTPValidationError
shape, which this service never sends. What the routes do not declare is added here, in one place, so
that the routers stay thin:

| the route                                     | adds                                               |
|-----------------------------------------------|----------------------------------------------------|
| any                                           | 503: the gateway itself is down (nginx answers)    |
| needs a token or API key (`CurrentUser`)      | 401; 503 / 504: auth unavailable / too slow        |
| needs the admin role (`AdminUser`)            | 403                                                |
| needs a token, beyond `CHAT_SCOPE_ROUTES`     | 403: a chat-scoped API key (a Telegram link's)     |
| is in `OPTIONAL_AUTH_ROUTES`                  | security that anonymous callers satisfy too (`{}`) |
| has a path parameter                          | 404                                                |
| has query parameters or a body                | 422, in the service's one error shape              |
| has a request body                            | 413: larger than nginx's body limit                |
| is in `ROUTE_ERRORS`                          | what it answers of its own (400, 409, 429, ...)    |

Every error status refers to the one `Error` schema (errors.error_body; nginx's own errors have the same
shape without "param"). Beyond errors: the two bearer schemes (access tokens and `gk-` API keys, both as
`Authorization: Bearer`) on each protected operation, the limits that depend on the settings (prompt
length, max_tokens), `text/event-stream` beside JSON for the streaming routes, files for exports,
schemas for answers the routes build as plain dicts, and examples for the main routes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from typing import Any, Literal

from fastapi import FastAPI, Request, Response, routing
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from genai_gateway.errors import error_response
from genai_gateway.routers import openai as openai_routes
from genai_gateway.schemas import MAX_LIMIT, SIMILARITY, UNLIMITED, Usage
from genai_gateway.security import CHAT_ONLY, CHAT_SCOPE_ROUTES, admin_principal, current_principal
from genai_gateway.settings import GatewaySettings

JSON = "application/json"
SSE = "text/event-stream"
REF = "#/components/schemas/{model}"
# Text with something in it besides whitespace, whitespace being what Python's str.isspace() says (what the
# services strip), spelt out: regex engines disagree on \s (ECMA's has U+FEFF, Python's has \x1c-\x1f, \x85).
NONBLANK = "[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

# --- documentation-only models -----------------------------------------------------------------------


class ErrorObject(BaseModel):
    message: str = Field(description="what went wrong, for a person")
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, not_found_error, "
        "conflict_error, rate_limit_error, service_unavailable, timeout_error, internal_error"
    )
    # Absent from nginx's own errors (413, 429 at /token, 503 when the gateway is down).
    param: str | None = Field(None, description="the request field at fault, when known")
    code: str = Field(description="a machine-readable reason (e.g. model_not_found), else the status")


class Error(BaseModel):
    """Every error answer: OpenAI's `error` object, which SDKs read, and `detail`, which FastAPI clients read."""

    error: ErrorObject
    detail: str = Field(description="the same message as error.message")


def _absent_unless_sent(schema: dict[str, Any]) -> None:
    # Left out of the answer rather than null: a default in the schema would say a value that never comes.
    schema.pop("default", None)


def _admin_only(description: str) -> Any:
    """A field of GET /health sent to admins only."""
    return Field(None, description=f"admins only: {description}", json_schema_extra=_absent_unless_sent)


class HealthOut(BaseModel):
    """GET /health: `status` for anyone; the other fields for an admin's credential only (absent otherwise)."""

    status: Literal["ok", "degraded", "down"] = Field(
        description="down (503): nobody gets answers; degraded: answers go on, something is missing"
    )
    reasons: list[str] = _admin_only("what users cannot do now, one line per failing dependency")
    model: str | None = _admin_only("the default model, once known")
    dependencies: dict[str, str] = _admin_only(
        "per dependency (auth, history, inference_adapter, model, redis, and PostgreSQL as postgres_auth "
        'and postgres_history see it): "ok", "down: <why>", or "unknown: <why>" when the service that would '
        "say is down itself"
    )
    history_spool: int = _admin_only("exchanges waiting for the history service")
    redis_failure_policy: Literal["open", "closed"] = _admin_only(
        "what a Redis outage means: per-process limits (open) or 503s (closed)"
    )
    credential_cache: str = _admin_only("whether token checks are answered from the gateway's cache")


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class ChatAnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatAnswerMessage
    logprobs: None
    finish_reason: str


class ChatCompletion(BaseModel):
    """OpenAI's chat.completion, with this server's `source` and `conversation_id`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    source: Literal["model", "cache"]
    conversation_id: str | None
    similarity: float | None = Field(None, ge=0, le=1, description=SIMILARITY)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: str


class Completion(BaseModel):
    """OpenAI's text_completion, with this server's `source` and `conversation_id`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    source: Literal["model", "cache"]
    conversation_id: str | None
    similarity: float | None = Field(None, ge=0, le=1, description=SIMILARITY)


class ExportedMessage(BaseModel):
    id: str
    created_at: str
    prompt: str
    response: str
    source: str
    model: str
    usage: Usage
    latency_ms: int
    request_id: str


class ExportedConversation(BaseModel):
    id: str
    title: str
    owner_id: str
    created_at: str
    updated_at: str
    message_count: int
    messages: list[ExportedMessage]


class ConversationExport(BaseModel):
    """A JSON export (genai_gateway.exports.to_json)."""

    exported_at: str
    conversations: list[ExportedConversation]


DOC_MODELS: tuple[type[BaseModel], ...] = (
    Error,
    HealthOut,
    ModelList,
    ChatCompletion,
    Completion,
    ConversationExport,
)

# --- why each status happens ---------------------------------------------------------------------------

GATEWAY_DOWN = "the gateway itself is unreachable (answered by nginx)"
AUTH_DOWN = "the authentication service is unavailable"
AUTH_SLOW = "the authentication service did not answer in time"
HISTORY_DOWN = "the history service is unavailable"
HISTORY_SLOW = "the history service did not answer in time"
BAD_CURSOR = "the cursor is not one this list gave out"

Reasons = dict[int, str]

_AUTH_CALL: Reasons = {503: AUTH_DOWN, 504: AUTH_SLOW}
_HISTORY_CALL: Reasons = {503: HISTORY_DOWN, 504: HISTORY_SLOW}
_EXPORT: Reasons = {
    **_HISTORY_CALL,
    400: "the export is larger than the server exports at once (PDF: fewer characters still)",
    429: "over your export limits (exports per minute, or at once) (Retry-After)",
    503: f"{HISTORY_DOWN}, or PDF exports are not available on this server, or limits cannot be checked "
    "(Redis down, policy closed)",
}
_GENERATION: Reasons = {
    400: "the model server refused the request (e.g. longer than the model's context)",
    404: "no such model (code model_not_found), or no such conversation of yours (conversation_not_found)",
    413: "the prompt is longer than the server's limit",
    422: "the prompt is empty, or max_tokens is outside 1 to the server's limit",
    429: "over one of your limits (requests or tokens per minute, concurrent requests, tokens per day)",
    503: "the model server is unavailable or its queue is full (Retry-After), the history service is "
    "unavailable (conversation_id given, or the answers waiting for it have reached their limit), or "
    "limits cannot be checked (Redis down, policy closed)",
    504: "the model took too long",
}
_OPENAI_GENERATION: Reasons = {
    **_GENERATION,
    400: "n other than 1, more than 4 stop sequences, content other than text, more than one prompt, "
    "a field this server does not know or cannot honour (named in the message), tool_choice without tools "
    "or naming none of them, or the model server refused the request (e.g. longer than the model's context)",
    413: "the messages (or the prompt) are longer than the server's limit",
    422: "no non-empty user message (or an empty prompt), a tool message without tool_call_id, or "
    "max_tokens outside 1 to the server's limit",
}

# What each route answers of its own, beyond what `_derived` finds in the route itself.
ROUTE_ERRORS: dict[str, Reasons] = {
    "POST /token": {
        **_AUTH_CALL,
        401: "wrong username or password",
        403: "the account is disabled, or (directory sign-in) none of the user's directory groups gives access",
        422: "no username and password, as JSON or as an OAuth2 password form",
        429: "too many failed logins for this account from this address or from this address (Retry-After), "
        "or too many login requests from this address (nginx)",
        503: f"{AUTH_DOWN}, or, for a directory account, the directory (LDAP/AD) does not answer (Retry-After)",
    },
    "POST /ask": _GENERATION,
    "POST /v1/chat/completions": _OPENAI_GENERATION,
    "POST /v1/completions": _OPENAI_GENERATION,
    "GET /v1/models": {
        503: "the model server is unavailable or serves no model",
        504: "the model server did not answer in time",
    },
    "POST /api/v1/auth/refresh": {
        **_AUTH_CALL,
        401: "the refresh token is invalid, expired, revoked or used (a reused one ends its whole session)",
        403: "(directory sign-in) none of the user's directory groups gives access any more",
        503: f"{AUTH_DOWN}, or, for a directory account, the directory (LDAP/AD) does not answer (Retry-After)",
    },
    "POST /api/v1/auth/logout": {
        **_AUTH_CALL,
        401: "neither the bearer access token nor the body's refresh token is valid",
    },
    "POST /api/v1/auth/password": {
        400: "the new password is not acceptable (too short or too long), or the account's password is the "
        "directory's",
        403: "the old password is incorrect",
        429: "too many wrong old passwords (Retry-After)",
    },
    "GET /api/v1/history": {**_HISTORY_CALL, 400: BAD_CURSOR},
    "GET /api/v1/history/search": {
        **_HISTORY_CALL,
        400: f"the query is empty once cleaned, or {BAD_CURSOR}",
        429: "over your limit of searches per minute (Retry-After)",
        503: f"{HISTORY_DOWN}, or limits cannot be checked (Redis down, policy closed)",
    },
    "GET /api/v1/history/export": _EXPORT,
    "GET /api/v1/history/{conversation_id}": _HISTORY_CALL,
    "PATCH /api/v1/history/{conversation_id}": {**_HISTORY_CALL, 400: "the title is empty once cleaned"},
    "DELETE /api/v1/history/{conversation_id}": _HISTORY_CALL,
    "GET /api/v1/history/{conversation_id}/export": _EXPORT,
    "POST /api/v1/keys": {
        400: "the owner is disabled, already has the most active keys allowed, the name is not acceptable, "
        "a lifetime and never_expires are both given, or the admin scope is asked for a user's key",
        403: "only an admin can create keys for another user, or the password is needed (no sign-in in the "
        "last few minutes) or wrong",
        429: "too many wrong passwords (Retry-After)",
        404: "no user by the owner's name",
    },
    "GET /api/v1/keys": {
        400: BAD_CURSOR,
        403: "only an admin can list another user's (or everyone's) keys",
        404: "no user by the owner's name",
    },
    "DELETE /api/v1/keys/{key_id}": {400: "the key id is not a UUID"},
    "POST /api/v1/telegram/codes": {
        403: "the password is needed (no sign-in in the last few minutes) or wrong",
        429: "too many wrong passwords (Retry-After)",
    },
    "POST /api/v1/telegram/links": {
        400: "the code is wrong, already used or expired, or the user already has the most active keys allowed",
        503: AUTH_DOWN,
        504: AUTH_SLOW,
    },
    "DELETE /api/v1/telegram/links/{link_id}": {400: "the link id is not a UUID"},
    "GET /api/v1/admin/telegram/links": {404: "no user by the owner's name"},
    "POST /api/v1/users": {400: "the username or password is not acceptable", 409: "the username is taken"},
    "GET /api/v1/users": {400: BAD_CURSOR},
    "PATCH /api/v1/users/{username}": {
        400: "you cannot disable yourself or remove your own admin role, at least one enabled admin must "
        "remain, or the limits are not acceptable",
    },
    "POST /api/v1/users/{username}/password": {400: "the new password is not acceptable"},
    "GET /api/v1/admin/conversations": {**_HISTORY_CALL, 400: BAD_CURSOR},
    "GET /api/v1/admin/conversations/export": _EXPORT,
    "GET /api/v1/admin/conversations/{conversation_id}": _HISTORY_CALL,
    "GET /api/v1/admin/conversations/{conversation_id}/export": _EXPORT,
    "GET /api/v1/admin/audit": {**_HISTORY_CALL, 400: BAD_CURSOR},
    "GET /api/v1/admin/usage": {
        **_HISTORY_CALL,
        400: f"`to` is before `from`, more than 366 days, or {BAD_CURSOR}",
    },
    "DELETE /api/v1/admin/cache": {503: "the cache cannot be purged (Redis is unavailable)"},
    "GET /api/v1/admin/cache/similar": {503: "Redis is unavailable"},
    "PATCH /api/v1/admin/cache/similar": {
        400: "the layer is switched off in the gateway's settings",
        503: "Redis is unavailable",
    },
    "DELETE /api/v1/admin/cache/similar": {503: "Redis is unavailable"},
    "GET /health": {
        503: "auth, the inference adapter or the model is down (with the health body: the status only, or "
        "an admin's report)"
    },
}

# What the services check of a parameter beyond its declared type, by operation and name.
_USER_ID = {"anyOf": [{"maxLength": 0}, {"format": "uuid"}], "description": "a user id; empty: every user"}
PARAMETER_RULES: dict[tuple[str, str], dict[str, Any]] = {
    ("GET /api/v1/history/search", "q"): {"pattern": NONBLANK},
    ("DELETE /api/v1/keys/{key_id}", "key_id"): {"format": "uuid"},
    ("DELETE /api/v1/telegram/links/{link_id}", "link_id"): {"format": "uuid"},
    ("GET /api/v1/admin/conversations", "owner"): _USER_ID,
    ("GET /api/v1/admin/usage", "owner"): _USER_ID,
    ("GET /api/v1/admin/conversations/export", "owner"): {"format": "uuid", "description": "the user id"},
}

# Answers with headers worth a client's attention.
RATE_LIMITED_ROUTES = frozenset({"POST /ask", "POST /v1/chat/completions", "POST /v1/completions"})
STREAMING_ROUTES = frozenset(RATE_LIMITED_ROUTES)
EXPORT_ROUTES = frozenset(key for key, reasons in ROUTE_ERRORS.items() if reasons is _EXPORT)

HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}},
    "X-RateLimit-Limit": {
        "description": "requests a minute allowed to you (absent when unlimited)",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Remaining": {
        "description": "requests left in the current minute",
        "schema": {"type": "string"},
    },
    "X-RateLimit-Reset": {
        "description": "seconds until the oldest request of the minute stops counting",
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
    "X-Request-ID": {
        "description": "the request's id (nginx's, or made by the gateway), also in the logs and history",
        "schema": {"type": "string"},
    },
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "accessToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token from POST /token (or /api/v1/auth/refresh): "
        "`Authorization: Bearer <access_token>`.",
    },
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "gk-...",
        "description": "An API key from POST /api/v1/keys, for scripts and the OpenAI SDK: "
        "`Authorization: Bearer gk-...`.",
    },
}
SECURITY = [{"accessToken": []}, {"apiKey": []}]
# Routes that answer anyone and an admin with more (never a 401 or 403): a credential is optional.
OPTIONAL_AUTH_ROUTES = frozenset({"GET /health"})

SSE_DESCRIPTIONS = {
    "POST /ask": "With `stream: true`: server-sent events, each `data: {json}`: "
    '`{"type": "delta", "text"}` while the model writes, `{"type": "queued", "position"}` while waiting '
    'for the model, then `{"type": "done", ...}` with the fields of the JSON answer, or '
    '`{"type": "error", "error": {...}, "detail"}` if it fails midway; then `data: [DONE]`. Lines starting '
    "with `:` keep the connection alive.",
    "POST /v1/chat/completions": "With `stream: true`: server-sent events as OpenAI sends them, each "
    "`data: {json}` a `chat.completion.chunk` (the first with the role, then content deltas, the last with "
    "`finish_reason`, `source` and `conversation_id`; a usage chunk with `stream_options.include_usage`), "
    'an `{"error": {...}}` event if it fails midway, then `data: [DONE]`. Lines starting with `:` are '
    "comments (keep-alive, place in the model's queue).",
    "POST /v1/completions": "With `stream: true`: server-sent events as OpenAI sends them, each "
    "`data: {json}` a `text_completion` chunk (text deltas, the last with `finish_reason`, `source` and "
    '`conversation_id`; a usage chunk with `stream_options.include_usage`), an `{"error": {...}}` event if '
    "it fails midway, then `data: [DONE]`. Lines starting with `:` are comments.",
}
SSE_EXAMPLES = {
    "POST /ask": 'data: {"type":"delta","text":"Run "}\n\ndata: {"type":"delta","text":"chmod +x"}\n\n'
    'data: {"type":"done","response":"Run chmod +x","source":"model","model":"smollm2-135m-instruct",'
    '"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16},"conversation_id":"0f8e...",'
    '"request_id":"9b2c...","finish_reason":"stop"}\n\ndata: [DONE]\n\n',
    "POST /v1/chat/completions": 'data: {"id":"chatcmpl-9b2c","object":"chat.completion.chunk",'
    '"created":1767225600,"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"role":"assistant",'
    '"content":""},"logprobs":null,"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-9b2c","object":"chat.completion.chunk","created":1767225600,'
    '"model":"smollm2-135m-instruct","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,'
    '"finish_reason":null}]}\n\ndata: [DONE]\n\n',
    "POST /v1/completions": 'data: {"id":"cmpl-9b2c","object":"text_completion","created":1767225600,'
    '"model":"smollm2-135m-instruct","choices":[{"index":0,"text":"Hello","logprobs":null,'
    '"finish_reason":null}]}\n\ndata: [DONE]\n\n',
}

# Before OpenAPI 3.2 (itemSchema), the schema of an event stream describes one event.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "a JSON object as the description says, or [DONE] last"},
        "event": {"type": "string"},
    },
    "required": ["data"],
}

EXPORT_MEDIA_TYPES: dict[str, dict[str, Any]] = {
    JSON: {"schema": {"$ref": REF.format(model="ConversationExport")}},
    "text/csv": {"schema": {"type": "string"}},
    "application/pdf": {"schema": {"type": "string", "format": "binary"}},
}

# Answers the routes build as plain dicts or JSONResponse: their schema, when the route documents none.
SUCCESS_SCHEMAS = {
    "GET /health": "HealthOut",
    "GET /v1/models": "ModelList",
    "POST /v1/chat/completions": "ChatCompletion",
    "POST /v1/completions": "Completion",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "POST /token": {
        "request": {"username": "alice", "password": "correct horse battery staple"},
        "response": {
            "access_token": "eyJhbGciOiJIUzI1NiIs...",
            "token_type": "bearer",
            "role": "user",
            "refresh_token": "eyJhbGciOiJIUzI1NiIs...",
            "expires_in": 900,
        },
    },
    "POST /ask": {
        "request": {"prompt": "How do I fix 'Permission denied' when running a script?", "max_tokens": 64},
        "response": {
            "response": "Make the script executable: chmod +x script.sh",
            "source": "model",
            "model": "smollm2-135m-instruct",
            "usage": {"prompt_tokens": 14, "completion_tokens": 11, "total_tokens": 25},
            "conversation_id": "0f8e4b8e-4c53-4a5e-9d43-0c1c2f0b6a11",
            "request_id": "9b2c1f0e8d7a4b6c",
            "finish_reason": "stop",
        },
    },
    "POST /v1/chat/completions": {
        "request": {
            "model": "smollm2-135m-instruct",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hello."},
            ],
            "max_tokens": 16,
        },
        "response": {
            "id": "chatcmpl-9b2c1f0e8d7a4b6c",
            "object": "chat.completion",
            "created": 1767225600,
            "model": "smollm2-135m-instruct",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
            "source": "model",
            "conversation_id": None,
        },
    },
}


# --- the document --------------------------------------------------------------------------------------


def install(app: FastAPI, settings: GatewaySettings) -> None:
    """Serve `document(app, settings)` as the app's OpenAPI document (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(405, _method_not_allowed)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    """405 naming every method of the path in Allow (RFC 9110), as the document lists them.

    Starlette's own Allow names the methods of the first route whose path matches, so a path served by
    several routes (GET and POST /api/v1/keys, the three of /api/v1/history/{conversation_id}) would
    seem to have one method only.
    """
    path = request.url.path
    matching = [route for route in _api_routes(request.app) if route.path_regex.match(path)]
    # As OpenAPI matches paths: a concrete one (/api/v1/history/search) before a templated one.
    fewest = min((route.path_format.count("{") for route in matching), default=0)
    methods = {
        method for route in matching if route.path_format.count("{") == fewest for method in route.methods
    }
    headers = dict(getattr(exc, "headers", None) or {})
    if methods:
        headers["Allow"] = ", ".join(sorted(methods))
    return error_response(405, "method not allowed", headers=headers)


def document(app: FastAPI, settings: GatewaySettings) -> dict[str, Any]:
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        servers=app.servers,
        separate_input_output_schemas=app.separate_input_output_schemas,
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, defs = models_json_schema([(model, "serialization") for model in DOC_MODELS], ref_template=REF)
    for name, schema in defs.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    components["headers"] = copy.deepcopy(HEADERS)
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)

    for route in _api_routes(app):
        for method in sorted(route.methods):
            operation = doc["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _complete(operation, f"{method} {route.path_format}", route)

    _apply_limits(schemas, settings)
    for unused in ("HTTPValidationError", "ValidationError"):
        if not _mentions(doc, f"#/components/schemas/{unused}"):
            schemas.pop(unused, None)
    return doc


def _complete(operation: dict[str, Any], key: str, route: APIRoute) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    reasons = _derived(route)
    for status, reason in ROUTE_ERRORS.get(key, {}).items():
        reasons.setdefault(status, []).append(reason)
    # Said last: the route's own reasons come first.
    reasons[503] = [reason for reason in reasons[503] if reason != GATEWAY_DOWN] + [GATEWAY_DOWN]
    # FastAPI's own 422 goes: a route whose only input is a string in the path cannot answer it.
    responses.pop("422", None)
    for status in sorted(reasons):
        responses[str(status)] = _error_response(key, status, reasons[status])
    if _depends_on(route, current_principal):
        operation["security"] = copy.deepcopy(SECURITY)
    elif key in OPTIONAL_AUTH_ROUTES:
        operation["security"] = [{}, *copy.deepcopy(SECURITY)]
    if _depends_on(route, admin_principal):
        operation["x-required-role"] = "admin"
    for parameter in operation.get("parameters", ()):
        rule = PARAMETER_RULES.get((key, parameter["name"]))
        if rule is not None:
            parameter["schema"] = {**parameter["schema"], **rule}
    _success(operation, key, route)
    example = EXAMPLES.get(key)
    if example is not None:
        media = operation.get("requestBody", {}).get("content", {}).get(JSON)
        if media is not None:
            media["example"] = example["request"]
        responses[_success_status(operation)]["content"][JSON]["example"] = example["response"]


def _derived(route: APIRoute) -> dict[int, list[str]]:
    """The statuses that follow from what the route is, each with why."""
    reasons: dict[int, list[str]] = {503: [GATEWAY_DOWN]}
    if _depends_on(route, current_principal):
        reasons[401] = ["no bearer token, or the access token or API key is invalid, expired or revoked"]
        reasons[503].insert(0, AUTH_DOWN)
        reasons[504] = [AUTH_SLOW]
    if _depends_on(route, admin_principal):
        reasons[403] = ["the caller is not an admin"]
    elif _depends_on(route, current_principal) and not any(
        f"{method} {route.path_format}" in CHAT_SCOPE_ROUTES for method in route.methods
    ):
        reasons[403] = [f"a chat-scoped API key (a Telegram link's): {CHAT_ONLY}"]
    params = route.dependant
    if _flat(params, lambda d: d.path_params):
        reasons[404] = ["not found (or not yours)"]
    if _flat(params, lambda d: d.query_params) or _flat(params, lambda d: d.body_params):
        reasons[422] = ["the request does not match this schema"]
    if _flat(params, lambda d: d.body_params) or route.openapi_extra and "requestBody" in route.openapi_extra:
        reasons[400] = ["the body cannot be parsed (not JSON, or not UTF-8)"]
        reasons[413] = ["the request body is larger than nginx allows (1 MB by default)"]
    return reasons


def _error_response(key: str, status: int, reasons: list[str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": "; ".join(dict.fromkeys(reasons)),
        "content": {JSON: {"schema": {"$ref": REF.format(model="Error")}}},
    }
    headers: dict[str, Any] = {}
    if status == 401:
        headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    if status == 429:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
        if key in RATE_LIMITED_ROUTES:
            # Every refusal of the gateway's limiter says when to come back.
            headers["Retry-After"] = {**HEADERS["Retry-After"], "required": True}
            for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
                headers[name] = {"$ref": f"#/components/headers/{name}"}
    if status == 503 and key in RATE_LIMITED_ROUTES:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if key == "GET /health" and status == 503:
        response["content"][JSON]["schema"] = {
            "anyOf": [{"$ref": REF.format(model="HealthOut")}, {"$ref": REF.format(model="Error")}]
        }
    if headers:
        response["headers"] = headers
    return response


def _success_status(operation: dict[str, Any]) -> str:
    return min(status for status in operation["responses"] if status.startswith("2"))


def _success(operation: dict[str, Any], key: str, route: APIRoute) -> None:
    ok = operation["responses"].setdefault(_success_status(operation), {"description": "Successful Response"})
    content = ok.get("content")
    if content is not None:
        json_media = content.setdefault(JSON, {})
        schema_name = SUCCESS_SCHEMAS.get(key)
        if schema_name is not None and not json_media.get("schema"):
            json_media["schema"] = {"$ref": REF.format(model=schema_name)}
    if key in EXPORT_ROUTES:
        ok["content"] = copy.deepcopy(EXPORT_MEDIA_TYPES)
        ok["description"] = "the file, as the `format` parameter asks (sent as an attachment)"
    if key in STREAMING_ROUTES:
        ok["content"][SSE] = {"schema": copy.deepcopy(SSE_EVENT), "example": SSE_EXAMPLES[key]}
        ok["description"] = "The whole answer as JSON. " + SSE_DESCRIPTIONS[key]
    ok.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
    if key in RATE_LIMITED_ROUTES:
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            ok["headers"][name] = {"$ref": f"#/components/headers/{name}"}


def _apply_limits(schemas: dict[str, Any], settings: GatewaySettings) -> None:
    """The input rules the service checks beyond the models' own, so that a client (and a fuzzer) knows
    what is accepted: some depend on the settings, some are checked in code rather than by the model."""
    nonblank = {"pattern": NONBLANK}
    prompt = {"type": "string", "maxLength": settings.max_prompt_chars, **nonblank}
    max_tokens = {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_limit}

    def patch(model: str, field: str, rule: dict[str, Any], *, nullable: bool | None = None) -> None:
        """Replace a field's schema; it stays nullable if it was, unless `nullable` says otherwise."""
        properties = schemas.get(model, {}).get("properties", {})
        if field in properties:
            keep_null = _is_nullable(properties[field]) if nullable is None else nullable
            properties[field] = _nullable(rule) if keep_null else {**rule}
            properties[field].setdefault("title", field.replace("_", " ").title())

    patch("AskRequest", "prompt", prompt)
    for model in ("AskRequest", "ChatCompletionRequest", "CompletionRequest"):
        patch(model, "max_tokens", max_tokens)
    # 0 (as null) leaves the choice to max_tokens.
    patch("ChatCompletionRequest", "max_completion_tokens", {**max_tokens, "minimum": 0})
    patch("ChatCompletionRequest", "n", {"type": "integer", "enum": [1], "default": 1})
    patch("CompletionRequest", "n", {"type": "integer", "enum": [1], "default": 1})
    stop = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}
    patch("ChatCompletionRequest", "stop", stop)
    patch("CompletionRequest", "stop", stop)
    patch(
        "CompletionRequest",
        "prompt",
        {"anyOf": [prompt, {"type": "array", "items": prompt, "minItems": 1, "maxItems": 1}]},
    )
    patch("ContentPart", "type", {"type": "string", "enum": ["text"]})
    # The auth service's rules for names and passwords (genai_auth.users).
    password = {"type": "string", "minLength": 8, "maxLength": 1024}
    generated_if_empty = {"type": "string", "default": "", "anyOf": [{"maxLength": 0}, password]}
    patch("PasswordChange", "new_password", password)
    patch("UserCreate", "username", {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{3,64}$"})
    patch("UserCreate", "password", generated_if_empty)
    patch("PasswordReset", "password", generated_if_empty)
    limit = {
        "anyOf": [
            {"type": "integer", "enum": [UNLIMITED]},
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        ],
        "description": f"{UNLIMITED}: unlimited; null or left out: the role's default",
    }
    for field in ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "tokens_per_day"):
        patch("UserLimits", field, limit)
    # A change to a user: at least one of its fields; only `limits` may be null (no overrides).
    patch("UserPatch", "disabled", {"type": "boolean"}, nullable=False)
    patch("UserPatch", "role", {"type": "string", "enum": ["user", "admin"]}, nullable=False)
    if "UserPatch" in schemas:
        schemas["UserPatch"]["minProperties"] = 1
    # The history service's: whitespace is collapsed, and nothing may be left blank.
    patch("ConversationRename", "title", {"type": "string", "minLength": 1, "maxLength": 200, **nonblank})
    # OpenAI's fields this server cannot honour are accepted with the value that asks for nothing, and any
    # other field it does not know is refused by name.
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        request = schemas.get(model)
        if request is None:
            continue
        for name, neutral in openai_routes.UNSUPPORTED_FIELDS.items():
            request["properties"].setdefault(
                name,
                {
                    "anyOf": [*({"const": same} for same in _equal_in_python(neutral)), {"type": "null"}],
                    "description": f"not supported: accepted only as {json.dumps(neutral)} (or equal) or null",
                },
            )
        request["additionalProperties"] = False
    # A tool's answer names the call it answers (OpenAI's rule; the gateway and model servers check it).
    message = schemas.get("ChatMessage")
    if message is not None and "tool_call_id" in message.get("properties", {}):
        message["if"] = {"properties": {"role": {"const": "tool"}}, "required": ["role"]}
        message["then"] = {
            "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
            "required": ["tool_call_id"],
        }
    # The messages must hold a user message with some text.
    chat = schemas.get("ChatCompletionRequest", {}).get("properties", {}).get("messages")
    if chat is not None:
        chat["contains"] = {
            "type": "object",
            "properties": {
                "role": {"const": "user"},
                "content": {
                    "anyOf": [
                        {"type": "string", **nonblank},
                        {
                            "type": "array",
                            "contains": {
                                "type": "object",
                                "properties": {"text": {"type": "string", **nonblank}},
                                "required": ["text"],
                            },
                        },
                    ]
                },
            },
            "required": ["role", "content"],
        }


def _equal_in_python(value: Any) -> list[Any]:
    """The JSON values the service takes for `value`: it compares with ==, for which false is 0."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return [bool(value), int(value)]
    return [value]


def _is_nullable(schema: dict[str, Any]) -> bool:
    return any(option.get("type") == "null" for option in schema.get("anyOf", ()))


def _nullable(rule: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [rule, {"type": "null"}]}


def _api_routes(app: FastAPI) -> Iterable[Any]:
    """The documented API routes, including those of included routers (each with its full path)."""
    for context in routing.iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            yield context


def _depends_on(route: APIRoute, call: Callable[..., Any]) -> bool:
    return any(dependency.call is call for dependency in _dependants(route.dependant))


def _dependants(dependant: Any) -> Iterable[Any]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _flat(dependant: Any, part: Callable[[Any], list[Any]]) -> list[Any]:
    return [param for each in _dependants(dependant) for param in part(each)]


def _mentions(value: Any, ref: str) -> bool:
    if isinstance(value, dict):
        return any(_mentions(item, ref) for item in value.values())
    if isinstance(value, list):
        return any(_mentions(item, ref) for item in value)
    return value == ref
