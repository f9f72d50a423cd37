"""gRPC channels to internal services: one per upstream, reused, with the request id on every call.

The request id of the work in progress (`genai_common.request_id`) is added to the metadata of every call
made on a channel from `create_channel` by an interceptor, so no caller passes it by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from genai_common import request_id
from genai_common.mtls import MtlsFiles, channel_credentials

_CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Fail fast on a connection that is down instead of waiting for it within the deadline.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    rid = request_id.current_request_id.get()
    if not rid:
        return details
    metadata = grpc.aio.Metadata(*(tuple(details.metadata) if details.metadata else ()))
    if request_id.METADATA_KEY in metadata:
        return details
    metadata.add(request_id.METADATA_KEY, rid)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class RequestIdInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Puts the current request id ("x-request-id") on every outgoing call that does not carry one."""

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)

    # The same for every kind of call: the request (or the iterator of requests) passes through as it is.
    intercept_unary_stream = intercept_unary_unary
    intercept_stream_unary = intercept_unary_unary
    intercept_stream_stream = intercept_unary_unary


def create_channel(
    target: str,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    mtls: MtlsFiles | None = None,
    server_identity: str = "",
) -> grpc.aio.Channel:
    """A channel to `target`; with `mtls`, mutual TLS that accepts only a server whose certificate is
    `server_identity`'s (e.g. "history"), whatever address `target` names."""
    chained = [RequestIdInterceptor(), *(interceptors or ())]
    if mtls is None:
        return grpc.aio.insecure_channel(target, options=list(_CHANNEL_OPTIONS), interceptors=chained)
    if not server_identity:
        raise ValueError("an mTLS channel needs the identity of the server it expects")
    options: list[tuple[str, Any]] = [*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_identity)]
    return grpc.aio.secure_channel(target, channel_credentials(mtls), options=options, interceptors=chained)
