import asyncio
import os
import signal
import socket

import grpc
from genai.history.v1 import history_pb2, history_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genai_history.main import run
from genai_history.servicer import SERVICE_NAME

from .support import make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_run_migrates_serves_and_stops_on_sigterm(new_database_dsn: str) -> None:
    listen = f"127.0.0.1:{free_port()}"
    # Retention on: its loop runs beside the server and must stop with it.
    settings = make_settings(new_database_dsn, listen=listen, migrate_on_start=True, retention_days=3650)
    task = asyncio.create_task(run(settings))
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(listen)
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

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 20)
    finally:
        await channel.close()
        if not task.done():
            task.cancel()
        # serve() installs handlers on the shared test loop; give SIGTERM and Ctrl-C back their defaults.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
