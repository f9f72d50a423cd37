"""The request id of the work in progress, carried from nginx through every gRPC hop."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

METADATA_KEY = "x-request-id"

current_request_id: ContextVar[str] = ContextVar("request_id", default="")


def new_request_id() -> str:
    return uuid.uuid4().hex


def sanitize(value: str | None) -> str:
    """Accept a caller's id only if it is short and printable; otherwise make one."""
    if value and len(value) <= 128 and value.isascii() and value.isprintable() and " " not in value:
        return value
    return new_request_id()
