"""Typed clients of the internal services: auth, history and the model (inference adapter).

Each client owns its deadlines, and is the one place where its service's gRPC failures become the
gateway's `ApiError` (`genai_gateway.errors.from_grpc`), naming the service in messages about outages.
Nothing above this module sees a `grpc.aio.AioRpcError`. The request id rides on every call by the
channels' interceptor (`genai_common.grpc_client`).

Routers take the clients as typed dependencies (`Auth`, `History`); the model is the pipeline's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import grpc
from fastapi import Depends, Request
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from genai.history.v1 import history_pb2, history_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genai_gateway.credentials import CredentialCache
from genai_gateway.errors import from_grpc

Q = TypeVar("Q")
R = TypeVar("R")
Metadata = tuple[tuple[str, str], ...]


class _Client:
    """Calls of one service: a deadline on each, and its failures translated in one place."""

    stub: Any

    # Named in messages about the service's outages ("the history service is unavailable; ...").
    what = "a backend service"
    # The answer to RESOURCE_EXHAUSTED: 429 where it means the caller asked too much, 503 where the
    # service as a whole is busy (`from_grpc`).
    busy_status = 429
    # The answer to DEADLINE_EXCEEDED: a dependency that misses its deadline hangs (auth or history, their
    # database, the model server), which the caller can only wait out: 503 with Retry-After. (The public
    # gRPC API still answers DEADLINE_EXCEEDED.)
    late_status = 503

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self.channel = channel
        self.timeout_s = timeout_s

    async def health(self, timeout_s: float = 1.0) -> str:
        """ "ok", or "down: <why>", from the service's grpc.health.v1 check."""
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return f"down: {exc.code().name.lower()}"
        return "ok" if reply.status == health_pb2.HealthCheckResponse.SERVING else "down: not serving"

    async def dependency_health(self, name: str, timeout_s: float = 1.0) -> str:
        """ "ok", or "down: <why>", for a dependency of the service (its health service's `name`, e.g.
        "postgres"); "unknown" when the service does not report it or cannot be asked."""
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            return f"unknown: {exc.code().name.lower()}"
        return "ok" if reply.status == health_pb2.HealthCheckResponse.SERVING else "down: not answering"

    async def _call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Any,
        *,
        timeout_s: float | None = None,
        metadata: Metadata = (),
    ) -> R:
        try:
            return await method(request, timeout=timeout_s or self.timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(
                exc, self.what, busy_status=self.busy_status, late_status=self.late_status
            ) from None

    async def _stream(
        self,
        method: Callable[..., Any],
        request: Any,
        *,
        timeout_s: float | None = None,
        metadata: Metadata = (),
    ) -> AsyncIterator[Any]:
        """The messages of a server stream; leaving early cancels the call (and the work behind it)."""
        call = method(request, timeout=timeout_s or self.timeout_s, metadata=metadata)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(
                exc, self.what, busy_status=self.busy_status, late_status=self.late_status
            ) from None
        finally:
            call.cancel()


def as_caller(token: str) -> Metadata:
    """Metadata for a call that auth authorises itself (admin calls, API keys): the caller's credential."""
    return (("authorization", f"Bearer {token}"),)


def _unary(rpc: str, _request: type[Q], _reply: type[R]) -> Callable[[Any, Q], Awaitable[R]]:
    """A method for the unary `rpc`: `await client.method(request)`; the types say what it takes and gives."""

    async def call(self: _Client, request: Q) -> R:
        return await self._call(getattr(self.stub, rpc), request)

    return call


def _as_caller(rpc: str, _request: type[Q], _reply: type[R]) -> Callable[[Any, Q, str], Awaitable[R]]:
    """A method for a unary `rpc` that auth authorises by the caller's own credential:
    `await client.method(request, token)`."""

    async def call(self: _Client, request: Q, token: str) -> R:
        return await self._call(getattr(self.stub, rpc), request, metadata=as_caller(token))

    return call


def _server_stream(rpc: str, _request: type[Q], _item: type[R]) -> Callable[[Any, Q], AsyncIterator[R]]:
    """A method for a server-streaming `rpc` of history (exports): `async for item in client.method(request)`,
    after the journal's exchanges are written (`HistoryClient.settled`)."""

    async def call(self: HistoryClient, request: Q) -> AsyncIterator[R]:
        await self.settled()
        stream = self._stream(getattr(self.stub, rpc), request, timeout_s=self.export_timeout_s)
        # Closed with this generator: a consumer that stops early cancels the call now.
        async with contextlib.aclosing(stream) as items:
            async for item in items:
                yield item

    return call


def _read(rpc: str, _request: type[Q], _reply: type[R]) -> Callable[[Any, Q], Awaitable[R]]:
    """A unary `rpc` of history that reads or changes what is stored: it goes after the journal's exchanges
    (`HistoryClient.settled`), so that the caller sees the answers it was given."""

    async def call(self: HistoryClient, request: Q) -> R:
        await self.settled()
        return await self._call(getattr(self.stub, rpc), request)

    return call


class AuthClient(_Client):
    what = "the authentication service"

    def __init__(self, channel: grpc.aio.Channel, credentials: CredentialCache, timeout_s: float) -> None:
        super().__init__(channel, timeout_s)
        self.stub = auth_pb2_grpc.AuthServiceStub(channel)
        self.credentials = credentials

    async def authenticate(self, token: str) -> auth_pb2.Principal:
        """Who a token or API key belongs to, from the credential cache while it may be trusted."""
        try:
            return await self.credentials.authenticate(self.stub, token, self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, self.what, late_status=self.late_status) from None

    async def follow_changes(self) -> None:
        """Keep the credential cache honest from auth's change feed, for as long as the gateway runs."""
        await self.credentials.follow(self.stub)

    login = _unary("Login", auth_pb2.LoginRequest, auth_pb2.TokenPair)
    refresh = _unary("Refresh", auth_pb2.RefreshRequest, auth_pb2.TokenPair)
    logout = _unary("Logout", auth_pb2.LogoutRequest, auth_pb2.LogoutResponse)
    change_password = _unary(
        "ChangePassword", auth_pb2.ChangePasswordRequest, auth_pb2.ChangePasswordResponse
    )
    create_api_key = _as_caller("CreateApiKey", auth_pb2.CreateApiKeyRequest, auth_pb2.CreatedApiKey)
    list_api_keys = _as_caller("ListApiKeys", auth_pb2.ListApiKeysRequest, auth_pb2.ListApiKeysResponse)
    revoke_api_key = _as_caller("RevokeApiKey", auth_pb2.RevokeApiKeyRequest, auth_pb2.RevokeApiKeyResponse)
    create_user = _as_caller("CreateUser", auth_pb2.CreateUserRequest, auth_pb2.User)
    list_users = _as_caller("ListUsers", auth_pb2.ListUsersRequest, auth_pb2.ListUsersResponse)
    set_user_role = _as_caller("SetUserRole", auth_pb2.SetUserRoleRequest, auth_pb2.User)
    set_user_disabled = _as_caller("SetUserDisabled", auth_pb2.SetUserDisabledRequest, auth_pb2.User)
    set_user_limits = _as_caller("SetUserLimits", auth_pb2.SetUserLimitsRequest, auth_pb2.User)
    reset_password = _as_caller(
        "ResetPassword", auth_pb2.ResetPasswordRequest, auth_pb2.ResetPasswordResponse
    )
    create_telegram_link_code = _as_caller(
        "CreateTelegramLinkCode", auth_pb2.CreateTelegramLinkCodeRequest, auth_pb2.TelegramLinkCode
    )
    # The code is the credential: no caller's token rides with it.
    redeem_telegram_link_code = _unary(
        "RedeemTelegramLinkCode", auth_pb2.RedeemTelegramLinkCodeRequest, auth_pb2.RedeemedTelegramLink
    )
    list_telegram_links = _as_caller(
        "ListTelegramLinks", auth_pb2.ListTelegramLinksRequest, auth_pb2.ListTelegramLinksResponse
    )
    revoke_telegram_link = _as_caller(
        "RevokeTelegramLink", auth_pb2.RevokeTelegramLinkRequest, auth_pb2.TelegramLink
    )


class HistoryClient(_Client):
    """Every call names the owner (or, for admin calls, the acting admin); history enforces it."""

    what = "the history service"

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float, export_timeout_s: float) -> None:
        super().__init__(channel, timeout_s)
        self.stub = history_pb2_grpc.HistoryServiceStub(channel)
        self.export_timeout_s = export_timeout_s
        # Writes out the exchanges journaled but not yet stored (`spool.HistoryRecorder.flush`), if any.
        self.before_read: Callable[[], Awaitable[None]] | None = None

    async def settled(self) -> None:
        if self.before_read is not None:
            await self.before_read()

    append_exchange = _unary(
        "AppendExchange", history_pb2.AppendExchangeRequest, history_pb2.AppendExchangeResponse
    )
    append_exchanges = _unary(
        "AppendExchanges", history_pb2.AppendExchangesRequest, history_pb2.AppendExchangesResponse
    )
    list_conversations = _read(
        "ListConversations", history_pb2.ListConversationsRequest, history_pb2.ListConversationsResponse
    )
    get_conversation = _read("GetConversation", history_pb2.GetConversationRequest, history_pb2.Conversation)
    delete_conversation = _read(
        "DeleteConversation", history_pb2.DeleteConversationRequest, history_pb2.DeleteConversationResponse
    )
    rename_conversation = _read(
        "RenameConversation", history_pb2.RenameConversationRequest, history_pb2.ConversationSummary
    )
    search_messages = _read(
        "SearchMessages", history_pb2.SearchMessagesRequest, history_pb2.SearchMessagesResponse
    )
    export_conversations = _server_stream(
        "ExportConversations", history_pb2.ExportConversationsRequest, history_pb2.ExportedMessage
    )
    admin_list_conversations = _read(
        "AdminListConversations",
        history_pb2.AdminListConversationsRequest,
        history_pb2.AdminListConversationsResponse,
    )
    admin_get_conversation = _read(
        "AdminGetConversation", history_pb2.AdminGetConversationRequest, history_pb2.Conversation
    )
    admin_export_conversations = _server_stream(
        "AdminExportConversations", history_pb2.AdminExportConversationsRequest, history_pb2.ExportedMessage
    )
    list_audit_events = _read(
        "ListAuditEvents", history_pb2.ListAuditEventsRequest, history_pb2.ListAuditEventsResponse
    )
    usage_report = _read("UsageReport", history_pb2.UsageReportRequest, history_pb2.UsageReportResponse)


class ModelClient(_Client):
    """The inference adapter. A full queue there means the service is busy (503), not that the caller
    asked too much; gRPC callers of the gateway still get RESOURCE_EXHAUSTED."""

    what = "the model service"
    busy_status = 503

    def __init__(self, channel: grpc.aio.Channel, generate_timeout_s: float) -> None:
        super().__init__(channel, generate_timeout_s)
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)

    async def list_models(self, timeout_s: float = 10.0) -> list[inference_pb2.Model]:
        listing = await self._call(
            self.stub.ListModels, inference_pb2.ListModelsRequest(), timeout_s=timeout_s
        )
        return list(listing.models)

    async def count_tokens(
        self, request: inference_pb2.CountTokensRequest, timeout_s: float
    ) -> inference_pb2.CountTokensResponse:
        return await self._call(self.stub.CountTokens, request, timeout_s=timeout_s)

    generate = _unary("Generate", inference_pb2.GenerateRequest, inference_pb2.GenerateResponse)

    def generate_stream(
        self, request: inference_pb2.GenerateRequest
    ) -> AsyncIterator[inference_pb2.GenerateChunk]:
        return self._stream(self.stub.GenerateStream, request)


def _backends(request: Request) -> Any:
    return request.app.state.backends


def auth_client(request: Request) -> AuthClient:
    return _backends(request).auth  # type: ignore[no-any-return]


def history_client(request: Request) -> HistoryClient:
    return _backends(request).history  # type: ignore[no-any-return]


Auth = Annotated[AuthClient, Depends(auth_client)]
History = Annotated[HistoryClient, Depends(history_client)]
