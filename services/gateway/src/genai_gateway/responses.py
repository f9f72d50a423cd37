"""Turning answers into HTTP responses: whole, or streamed as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from genai.auth.v1 import auth_pb2

from genai_gateway.errors import ApiError, error_body
from genai_gateway.pipeline import Answer, AskPipeline, Delta, Event, Generation, Queued
from genai_gateway.streaming import DONE, KEEPALIVE, SSE_HEADERS, Pull, sse

# How long to wait for the first piece before sending the response head: a failure that comes at once
# (model server down, unknown conversation) then gets a real HTTP status instead of an event.
FIRST_EVENT_WAIT_S = 1.0

# The status of a request whose client left before its answer (nginx's own code for it).
CLIENT_CLOSED = 499

T = TypeVar("T")


class JsonResponse(Response):
    """A whole answer as JSON, encoded once by orjson.

    Returned as a Response, the body skips FastAPI's response handling: validating the dict against the
    route's response model, dumping it again, and `jsonable_encoder` walking it for the stdlib encoder. The
    bodies are built here from the pipeline's own values, so that work checked nothing; the route still
    declares its model, and the OpenAPI document is unchanged. Output matches Starlette's JSONResponse:
    compact, UTF-8 unescaped.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Encoder:
    """How one API writes the pieces of a streamed answer."""

    def start(self) -> list[bytes]:
        return []

    def delta(self, delta: Delta) -> bytes:
        raise NotImplementedError

    def final(self, answer: Answer) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: ApiError) -> bytes:
        return sse(error_body(error.status, error.message, error.code))

    def queued(self, queued: Queued) -> bytes:
        # OpenAI clients know no such event: a comment keeps the connection alive and tells a person.
        return f": queued, position {queued.position}\n\n".encode()


async def event_stream(
    events: AsyncIterator[Event],
    encoder: Encoder,
    *,
    keepalive_s: float,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    pull: Pull[Event] = Pull(events)
    await pull.first(FIRST_EVENT_WAIT_S)

    async def body() -> AsyncIterator[bytes]:
        for head in encoder.start():
            yield head
        try:
            async for item in pull.items(keepalive_s):
                if item is None:
                    yield KEEPALIVE
                elif isinstance(item, Delta):
                    yield encoder.delta(item)
                elif isinstance(item, Queued):
                    yield encoder.queued(item)
                else:
                    for tail in encoder.final(item):
                        yield tail
        except ApiError as exc:
            yield encoder.error(exc)
        yield DONE

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
    )


def usage_dict(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
    }


class AskEncoder(Encoder):
    """POST /ask with stream=true: {"type": "delta", "text"} events, then {"type": "done", ...}."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id

    def delta(self, delta: Delta) -> bytes:
        return sse({"type": "delta", "text": delta.text})

    def final(self, answer: Answer) -> list[bytes]:
        return [sse({"type": "done", **ask_body(answer, self.request_id)})]

    def error(self, error: ApiError) -> bytes:
        return sse({"type": "error", **error_body(error.status, error.message, error.code)})

    def queued(self, queued: Queued) -> bytes:
        return sse({"type": "queued", "position": queued.position})


def ask_body(answer: Answer, request_id: str) -> dict[str, Any]:
    return {
        "response": answer.text,
        "source": answer.source,
        "model": answer.model,
        "usage": usage_dict(answer),
        "conversation_id": answer.conversation_id or None,
        "request_id": request_id,
        "finish_reason": answer.finish_reason,
        "similarity": answer.similarity,
    }


def no_cache(headers: Mapping[str, str]) -> bool:
    """`Cache-Control: no-cache` (or no-store): answer from the model, not from the cache."""
    value = headers.get("cache-control", "").lower()
    return "no-cache" in value or "no-store" in value


async def _until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`, cancelled if the client goes away first, which frees the model and the caller's slot.

    The body has been read by now, so the next message from the server is the client's disconnect. The work
    runs in this task (one watcher task beside it, no second task for the work): the watcher cancels this
    task when the client leaves.
    """
    this = asyncio.current_task()
    assert this is not None
    watch = asyncio.ensure_future(_disconnected(request))
    watch.add_done_callback(lambda w: None if w.cancelled() else this.cancel())
    try:
        return await work
    except asyncio.CancelledError:
        if watch.cancelled() or not watch.done() or this.uncancel() > 0:
            raise  # cancelled for another reason (shutdown): not the client's leaving
        # Nobody reads this answer; nginx logs a client that left as 499 too.
        raise ApiError(CLIENT_CLOSED, "the client closed the request") from None
    finally:
        watch.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def serve(
    generation: Generation,
    *,
    stream: bool,
    encoder: Callable[[str], Encoder],
    whole: Callable[[Answer], Any],
    request: Request,
    response: Response,
    principal: auth_pb2.Principal,
) -> Any:
    """Ask the pipeline and answer over HTTP: streamed (`encoder` is given the model's name) or whole.

    `response` holds the headers the caller is given either way (its rate-limit headers)."""
    pipeline: AskPipeline = request.app.state.pipeline
    generation.no_cache = no_cache(request.headers)
    ticket = await pipeline.admit(principal, generation)
    response.headers.update(ticket.headers())
    if stream:
        return await event_stream(
            ticket.events(),
            encoder(ticket.model),
            keepalive_s=pipeline.settings.stream_keepalive_s,
            headers=response.headers,
        )
    return JsonResponse(whole(await _until_disconnected(request, ticket.answer())), headers=response.headers)
