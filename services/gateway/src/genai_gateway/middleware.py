"""Request ids: taken from nginx's X-Request-ID (or made here), set for logs and gRPC calls, echoed back."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genai_common.request_id import current_request_id, sanitize


class RequestIdMiddleware:
    """Plain ASGI rather than BaseHTTPMiddleware, which would buffer streamed responses."""

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
