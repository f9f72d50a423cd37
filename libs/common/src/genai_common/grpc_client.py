"""gRPC channels to internal services: one per upstream, reused, with the request id on every call.

The request id of the work in progress (`genai_common.request_id`) is added to the metadata of every call
made on a channel from `create_channel` by an interceptor, so no caller passes it by hand.

Every replica of a service is interchangeable (several containers behind one DNS name), so a channel spreads
its calls over all of them, and calls that are safe to repeat go to another replica when one dies:
- **Balancing**: client-side round robin over every address the target resolves to
  (`{"loadBalancingConfig": [{"round_robin": {}}]}`); a name is resolved by gRPC's DNS resolver
  (`dns:///auth:50051`), a comma list of IP addresses is handed over as they are (`ipv4:` / `ipv6:`).
- **New and lost replicas**: gRPC resolves the name again whenever a connection fails or is closed
  (at most every `_RESOLVE_EVERY_MS`). It has no periodic re-resolution; what makes a client notice a
  replica that was *added* is the servers' `grpc.max_connection_age_ms` (`genai_common.grpc_server`): each
  connection is closed after a while, and reconnecting resolves the name again (gRFC A9).
- **Retries**: a call that failed UNAVAILABLE (its replica died or was unreachable) is tried again, on the
  next replica, only for the methods that are safe to repeat (`IDEMPOTENT_METHODS`: reads, writes that
  change nothing when repeated, writes carrying an idempotency key). A call the server never saw is retried by gRPC
  anyway (transparent retry); one that may have been carried out is not, unless named. A throttle stops
  retries while most calls fail (the whole service down), so an outage costs no retry storm.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
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
# How often a channel may resolve its target's name again (gRPC's default: 30 s); a replica that restarts
# under a new address is found this long after its old one failed.
_RESOLVE_EVERY_MS = 5_000
# Retries of the methods named safe to repeat: at most this many attempts in all, the first retry after
# up to 0.1 s (gRPC randomises the wait). Only UNAVAILABLE: the replica did not answer. DEADLINE_EXCEEDED is
# never retried: the caller's deadline covers every attempt, and a hung dependency would only hang again.
RETRY_ATTEMPTS = 3
_RETRY_POLICY = {
    "maxAttempts": RETRY_ATTEMPTS,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Per channel: each failed attempt costs a token, each success gives back 0.1; below half of the tokens no
# call is retried (a service down as a whole is not asked twice as often). Enough tokens for every call in
# flight on a replica that dies under load: those failures come at once, and each must be retried.
_RETRY_THROTTLING = {"maxTokens": 200, "tokenRatio": 0.1}

# The internal methods that are safe to send again after an UNAVAILABLE that may have come after the server
# did the work: reads, and writes whose repeat changes nothing. What is left out, and why:
# - auth Refresh: a refresh token is spent once; a second use looks like a stolen token and ends the
#   session. ChangePassword, CreateUser, CreateApiKey, ResetPassword, the Telegram codes: a repeat fails
#   (the old password is gone, the name taken) or makes a second key or code. Admin writes (SetUser*,
#   Revoke*) would write their audit event twice. WatchCredentials: the gateway follows it again itself.
# - history DeleteConversation: a repeat answers NOT_FOUND for a delete that worked.
# - inference Generate/GenerateStream: a generation that may have run would cost the GPU again; the adapter
#   fails over between model servers itself, and a call that reached no adapter is retried by gRPC anyway.
# A server that answers UNAVAILABLE itself because a dependency they all share is down (PostgreSQL) says
# "no retry" (`genai_common.grpc_server.NO_RETRY`): another replica would only fail the same way.
IDEMPOTENT_METHODS: tuple[str, ...] = (
    "grpc.health.v1.Health/Check",
    # Login issues a new token pair and stores nothing; a repeat counts once more in sign-in throttling at
    # most (only when the first attempt was carried out and its answer lost).
    "genai.auth.v1.AuthService/Login",
    "genai.auth.v1.AuthService/Logout",
    "genai.auth.v1.AuthService/Authenticate",
    "genai.auth.v1.AuthService/ListUsers",
    "genai.auth.v1.AuthService/ListApiKeys",
    "genai.auth.v1.AuthService/ListTelegramLinks",
    # Every exchange carries an exchange_id that history stores once (a repeat returns the stored ids).
    "genai.history.v1.HistoryService/AppendExchange",
    "genai.history.v1.HistoryService/AppendExchanges",
    "genai.history.v1.HistoryService/ListConversations",
    "genai.history.v1.HistoryService/GetConversation",
    "genai.history.v1.HistoryService/RenameConversation",
    "genai.history.v1.HistoryService/SearchMessages",
    # Streams are retried only before their first message arrives (gRPC commits the call then).
    "genai.history.v1.HistoryService/ExportConversations",
    "genai.history.v1.HistoryService/AdminListConversations",
    "genai.history.v1.HistoryService/AdminGetConversation",
    "genai.history.v1.HistoryService/AdminExportConversations",
    "genai.history.v1.HistoryService/ListAuditEvents",
    "genai.history.v1.HistoryService/UsageReport",
    "genai.inference.v1.InferenceService/ListModels",
    "genai.inference.v1.InferenceService/CountTokens",
)


def channel_target(target: str) -> str:
    """The gRPC target for `target`: a URI as it is ("dns:///history:50052", "ipv4:10.0.0.1:50052"); a
    "host:port" as a DNS name whose every address is a replica; "a:port,b:port" (IP addresses only) as a
    static list of replicas, which tests and sites without DNS use."""
    target = target.strip()
    if _has_scheme(target):
        return target
    if "," not in target:
        return f"dns:///{target}"
    addresses = [part.strip() for part in target.split(",") if part.strip()]
    families = {_ip_family(address) for address in addresses}
    if None in families or len(families) != 1:
        raise ValueError(
            f"a list of replicas must be IP addresses of one family with ports ({target!r}); for names, use "
            "one DNS name that resolves to every replica"
        )
    return f"{families.pop()}:{','.join(addresses)}"


def _has_scheme(target: str) -> bool:
    scheme, sep, _ = target.partition(":")
    return bool(sep) and scheme in {"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"}


def _ip_family(address: str) -> str | None:
    """ "ipv4" or "ipv6" for "1.2.3.4:50052" or "[::1]:50052" (a port is required); None for a name."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        return None
    return "ipv4" if ip.version == 4 else "ipv6"


def service_config(retry_methods: Iterable[str] = ()) -> str:
    """The channel's service config (JSON): round robin, and retries on UNAVAILABLE for `retry_methods`,
    each "package.Service" (every method of it) or "package.Service/Method"."""
    names = []
    for qualified in retry_methods:
        service, _, method = qualified.partition("/")
        names.append({"service": service, "method": method} if method else {"service": service})
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [{"name": names, "retryPolicy": _RETRY_POLICY}]
        config["retryThrottling"] = _RETRY_THROTTLING
    return json.dumps(config)


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
    retry_methods: Iterable[str] = IDEMPOTENT_METHODS,
) -> grpc.aio.Channel:
    """A channel to every replica `target` names (`channel_target`), balanced round robin; calls of
    `retry_methods` that fail UNAVAILABLE are tried again on another replica (see the module docstring).

    With `mtls`, mutual TLS that accepts only a server whose certificate is `server_identity`'s (e.g.
    "history"), whatever addresses `target` resolves to."""
    chained = [RequestIdInterceptor(), *(interceptors or ())]
    options: list[tuple[str, Any]] = [
        *_CHANNEL_OPTIONS,
        ("grpc.dns_min_time_between_resolutions_ms", _RESOLVE_EVERY_MS),
        ("grpc.service_config", service_config(retry_methods)),
        ("grpc.enable_retries", 1),
    ]
    uri = channel_target(target)
    if mtls is None:
        return grpc.aio.insecure_channel(uri, options=options, interceptors=chained)
    if not server_identity:
        raise ValueError("an mTLS channel needs the identity of the server it expects")
    options.append(("grpc.ssl_target_name_override", server_identity))
    return grpc.aio.secure_channel(uri, channel_credentials(mtls), options=options, interceptors=chained)
