"""Exchanges survive a history outage: spooled to Redis, replayed once history is back, never twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as redis
from genai.history.v1 import history_pb2

from genai_common import mtls
from genai_common.grpc_client import create_channel
from genai_devstack.infra import free_port, wait_for_port
from genai_gateway.clients import HistoryClient
from genai_gateway.spool import SPOOL_KEY, HistoryRecorder


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, mtls.MtlsFiles]:
    return mtls.ensure_all(tmp_path_factory.mktemp("mtls"))


@pytest.fixture(scope="module")
def history_address(postgres_dsn: str, pki: dict[str, mtls.MtlsFiles]) -> Iterator[str]:
    """The real history service, as a process, on mutual TLS as in production."""
    port = free_port()
    env = {
        **os.environ,
        **mtls.settings_env("history", pki["history"]),
        "GENAI_HISTORY_DATABASE_URL": postgres_dsn,
        "GENAI_HISTORY_LISTEN": f"127.0.0.1:{port}",
        "GENAI_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "genai_history"], env=env)
    try:
        wait_for_port("127.0.0.1", port, 30, "history")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _exchange(owner: str, prompt: str) -> history_pb2.AppendExchangeRequest:
    return history_pb2.AppendExchangeRequest(
        owner_id=owner,
        prompt=prompt,
        response="answer",
        source="model",
        model="m",
        created_at_ms=int(time.time() * 1000),
        exchange_id=uuid.uuid4().hex,
    )


async def test_outage_spools_and_replay_writes_once(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    await redis_client.delete(SPOOL_KEY)
    owner = str(uuid.uuid4())
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    up_channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    try:
        down = HistoryRecorder(HistoryClient(down_channel, 1, 1), redis_client)
        assert await down.record(_exchange(owner, "first")) == ""
        assert await down.record(_exchange(owner, "second")) == ""
        assert await down.pending() == 2

        # A copy of one entry stands for a replay that another gateway also made: still stored once.
        first_raw = await redis_client.lindex(SPOOL_KEY, 0)
        await redis_client.rpush(SPOOL_KEY, first_raw)

        up_history = HistoryClient(up_channel, 5, 5)
        up = HistoryRecorder(up_history, redis_client)
        assert await up.drain_once() == 3
        assert await up.pending() == 0
        listing = await up_history.list_conversations(history_pb2.ListConversationsRequest(owner_id=owner))
        assert sorted(c.title for c in listing.conversations) == ["first", "second"]
    finally:
        await down_channel.close()
        await up_channel.close()


async def test_redis_and_history_both_down_keeps_exchanges_in_memory(
    history_address: str, pki: dict[str, mtls.MtlsFiles]
) -> None:
    from genai_common.redis_client import create_redis

    dead_redis = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    up_channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    owner = str(uuid.uuid4())
    try:
        recorder = HistoryRecorder(HistoryClient(down_channel, 1, 1), dead_redis)
        assert await recorder.record(_exchange(owner, "kept in memory")) == ""
        assert await recorder.pending() == 1
        recorder.history = HistoryClient(up_channel, 5, 5)
        assert await recorder.drain_once() == 1
        listing = await recorder.history.list_conversations(
            history_pb2.ListConversationsRequest(owner_id=owner)
        )
        assert [c.title for c in listing.conversations] == ["kept in memory"]
    finally:
        await dead_redis.aclose()
        await down_channel.close()
        await up_channel.close()


async def test_a_full_spool_asks_for_a_wait_and_drops_nothing(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    await redis_client.delete(SPOOL_KEY)
    owner = str(uuid.uuid4())
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    up_channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    try:
        recorder = HistoryRecorder(HistoryClient(down_channel, 1, 1), redis_client, max_spooled=3)
        assert not await recorder.full()  # history has not failed yet
        for n in range(3):
            await recorder.record(_exchange(owner, f"q{n}"))
        # At the bound the pipeline refuses new questions (503) rather than losing an answer; one already
        # under way is still kept.
        assert await recorder.full()
        await recorder.record(_exchange(owner, "under way"))
        assert await recorder.pending() == 4
        recorder.history = HistoryClient(up_channel, 5, 5)
        assert await recorder.drain_once() == 4
        assert not await recorder.full()
    finally:
        await down_channel.close()
        await up_channel.close()


async def test_memory_spool_is_bounded_the_same_way(history_address: str) -> None:
    from genai_common.redis_client import create_redis

    dead_redis = create_redis(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    try:
        recorder = HistoryRecorder(HistoryClient(down_channel, 1, 1), dead_redis, memory_limit=2)
        for n in range(3):
            await recorder.record(_exchange(str(uuid.uuid4()), f"q{n}"))
        assert await recorder.full()
        assert await recorder.pending() == 3  # nothing dropped to make room
    finally:
        await dead_redis.aclose()
        await down_channel.close()
