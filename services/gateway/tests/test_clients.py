"""The typed clients: one place where a service's gRPC failures become the gateway's ApiError, for unary
calls and streams alike, against a fake history service on a real gRPC server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from genai.history.v1 import history_pb2, history_pb2_grpc

from genai_common.grpc_client import create_channel
from genai_gateway.clients import HistoryClient
from genai_gateway.errors import ApiError


class Exporter(history_pb2_grpc.HistoryServiceServicer):
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def ExportConversations(
        self, request: history_pb2.ExportConversationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[history_pb2.ExportedMessage]:
        if request.conversation_id == "too-big":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "too big to export")
        try:
            for i in range(1000):
                yield history_pb2.ExportedMessage(message=history_pb2.Message(id=str(i)))
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ListConversations(
        self, request: history_pb2.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> history_pb2.ListConversationsResponse:
        await asyncio.sleep(5)
        return history_pb2.ListConversationsResponse()


@pytest.fixture
async def history() -> AsyncIterator[tuple[HistoryClient, Exporter]]:
    servicer = Exporter()
    server = grpc.aio.server()
    history_pb2_grpc.add_HistoryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    try:
        yield HistoryClient(channel, timeout_s=0.3, export_timeout_s=10), servicer
    finally:
        await channel.close()
        await server.stop(None)


async def test_a_refused_stream_is_an_api_error_with_the_services_message(
    history: tuple[HistoryClient, Exporter],
) -> None:
    client, _ = history
    with pytest.raises(ApiError) as refused:
        [
            m
            async for m in client.export_conversations(
                history_pb2.ExportConversationsRequest(conversation_id="too-big")
            )
        ]
    assert (refused.value.status, refused.value.message) == (400, "too big to export")
    assert refused.value.grpc_code == grpc.StatusCode.FAILED_PRECONDITION


async def test_leaving_a_stream_early_cancels_the_call(history: tuple[HistoryClient, Exporter]) -> None:
    client, servicer = history
    stream = client.export_conversations(history_pb2.ExportConversationsRequest())
    assert (await anext(stream)).message.id == "0"
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(servicer.cancelled.wait(), 5)


async def test_a_call_past_its_deadline_names_the_service(history: tuple[HistoryClient, Exporter]) -> None:
    client, _ = history
    with pytest.raises(ApiError) as late:
        await client.list_conversations(history_pb2.ListConversationsRequest())
    assert (
        late.value.status == 503
        and late.value.message == "the history service did not answer in time; try again shortly"
    )
    assert late.value.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
