import asyncio
import os
import signal
import socket

import grpc
from genai.history.v1 import history_pb2, history_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genai_common import mtls
from genai_common.grpc_client import create_channel
from genai_history.main import run
from genai_history.servicer import SERVICE_NAME

from .support import make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_run_migrates_serves_and_stops_on_sigterm(new_database_dsn: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    listen = f"127.0.0.1:{free_port()}"
    pki = mtls.ensure_all(tmp_path)
    # Retention on: its loop runs beside the server and must stop with it. Outside dev mode: mTLS only.
    settings = make_settings(
        new_database_dsn,
        listen=listen,
        migrate_on_start=True,
        retention_days=3650,
        env="prod",
        mtls_ca_file=str(pki["history"].ca),
        mtls_cert_file=str(pki["history"].cert),
        mtls_key_file=str(pki["history"].key),
    )
    task = asyncio.create_task(run(settings))
    loop = asyncio.get_running_loop()
    channel = create_channel(listen, mtls=pki["gateway"], server_identity="history")
    intruder = create_channel(listen, mtls=pki["adapter"], server_identity="history")
    plaintext = grpc.aio.insecure_channel(listen)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        history = history_pb2_grpc.HistoryServiceStub(channel)
        owner = "00000000-0000-4000-8000-000000000001"
        reply = await history.AppendExchange(
            history_pb2.AppendExchangeRequest(owner_id=owner, prompt="hi", response="yo", source="model"),
            timeout=5,
        )
        listed = await history.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner))
        assert [c.id for c in listed.conversations] == [reply.conversation_id]

        # Another service's certificate may probe health but not read anyone's history; plaintext gets nothing.
        refused = history_pb2_grpc.HistoryServiceStub(intruder).ListConversations(
            history_pb2.ListConversationsRequest(owner_id=owner), timeout=5
        )
        try:
            await refused
            raise AssertionError("the adapter's certificate read history")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
        probe = await health_pb2_grpc.HealthStub(intruder).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
        try:
            await history_pb2_grpc.HistoryServiceStub(plaintext).ListConversations(
                history_pb2.ListConversationsRequest(owner_id=owner), timeout=5
            )
            raise AssertionError("plaintext read history")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 20)
    finally:
        for opened in (channel, intruder, plaintext):
            await opened.close()
        if not task.done():
            task.cancel()
        # serve() installs handlers on the shared test loop; give SIGTERM and Ctrl-C back their defaults.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
