"""gRPC channels to internal services: one per upstream, reused, with the request id in metadata."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from genai_common import request_id

_CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Fail fast on a connection that is down instead of waiting for it within the deadline.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


def create_channel(
    target: str, interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None
) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=list(_CHANNEL_OPTIONS), interceptors=interceptors)


def call_metadata(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing call: the current request id plus anything given."""
    rid = request_id.current_request_id.get()
    base: tuple[tuple[str, str], ...] = ((request_id.METADATA_KEY, rid),) if rid else ()
    return base + tuple(extra)
