"""Servers and settings for the history tests, shared by conftest.py and the test modules."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from genai.history.v1 import history_pb2, history_pb2_grpc

from genai_common.grpc_server import ServiceInterceptor
from genai_history.servicer import HistoryServicer
from genai_history.settings import HistorySettings
from genai_history.store import HistoryStore

Stub = history_pb2_grpc.HistoryServiceStub


def make_settings(dsn: str, **overrides: Any) -> HistorySettings:
    # Every cap given explicitly so GENAI_HISTORY_* variables in the environment cannot change a test.
    values: dict[str, Any] = {
        "database_url": dsn,
        "listen": "127.0.0.1:0",
        "max_page_size": 100,
        "default_page_size": 20,
        "max_messages": 500,
        "max_text_chars": 200_000,
        "migrate_on_start": False,
        "pool_max_size": 5,
        "metrics_port": 0,
    }
    values.update(overrides)
    return HistorySettings(**values)


@asynccontextmanager
async def running_server(store: HistoryStore, settings: HistorySettings) -> AsyncIterator[Stub]:
    """The servicer behind the production interceptor on an in-process server, and a stub to call it."""
    server = grpc.aio.server(interceptors=[ServiceInterceptor()])
    history_pb2_grpc.add_HistoryServiceServicer_to_server(HistoryServicer(store, settings), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield history_pb2_grpc.HistoryServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


def new_owner() -> str:
    return str(uuid.uuid4())


async def append(stub: Stub, owner_id: str, prompt: str = "hello", **fields: Any):
    """Store one exchange through the service, with a default response and source."""
    fields.setdefault("response", "hi there")
    fields.setdefault("source", "model")
    return await stub.AppendExchange(
        history_pb2.AppendExchangeRequest(owner_id=owner_id, prompt=prompt, **fields)
    )


async def fails_with(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    """Await a call that must fail with `code`; returns the status details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""
