"""Exchanges are journaled in Redis and written to history in batches: never lost, never twice, and seen
by the next read; they survive a history outage, and one of Redis and history together."""

from __future__ import annotations

import asyncio
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
from genai_gateway.spool import REPLAYED, TURN_SUFFIX, HistoryRecorder


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


def _exchange(owner: str, prompt: str, conversation_id: str = "") -> history_pb2.AppendExchangeRequest:
    return history_pb2.AppendExchangeRequest(
        owner_id=owner,
        conversation_id=conversation_id,
        prompt=prompt,
        response="answer",
        source="model",
        model="m",
        created_at_ms=int(time.time() * 1000),
        exchange_id=uuid.uuid4().hex,
    )


async def test_exchanges_are_journaled_then_written_once_in_a_batch(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    """The answer's path only journals; a pass writes the batch to history, a repeat (another gateway's
    pass, or one after a crash) is stored once, and new conversations keep the ids callers were given."""
    key = f"journal:{uuid.uuid4().hex}"
    owner = str(uuid.uuid4())
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    up_channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    try:
        down = HistoryRecorder(HistoryClient(down_channel, 1, 1), redis_client, key=key)
        first = await down.record(_exchange(owner, "first"))
        second = await down.record(_exchange(owner, "second"))
        assert uuid.UUID(first) and uuid.UUID(second) and first != second
        assert await down.pending() == 2
        # History is down: the pass keeps both, and new questions are counted against the bound.
        assert await down.drain_once() == 0
        assert down.failing and await down.pending() == 2

        # A copy of one entry stands for a write that another gateway also made: still stored once.
        first_raw = await redis_client.lindex(key, 0)
        await redis_client.rpush(key, first_raw)
        # A follow-up in the first conversation, journaled before the conversation itself is stored.
        await down.record(_exchange(owner, "follow-up", conversation_id=first))

        up_history = HistoryClient(up_channel, 5, 5)
        up = HistoryRecorder(up_history, redis_client, key=key)
        assert await up.drain_once() == 4
        assert await up.pending() == 0 and not up.failing
        listing = await up_history.list_conversations(history_pb2.ListConversationsRequest(owner_id=owner))
        assert sorted((c.id, c.title, c.message_count) for c in listing.conversations) == sorted(
            [(first, "first", 2), (second, "second", 1)]
        )
    finally:
        await redis_client.delete(key)
        await down_channel.close()
        await up_channel.close()


async def test_a_read_waits_for_what_was_journaled_before_it(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    """Two gateways share the journal: what one journaled, a read through the other sees at once."""
    key = f"journal:{uuid.uuid4().hex}"
    owner = str(uuid.uuid4())
    channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    readers = HistoryClient(channel, 5, 5)
    writer = HistoryRecorder(HistoryClient(channel, 5, 5), redis_client, key=key)
    reader = HistoryRecorder(readers, redis_client, key=key)
    readers.before_read = reader.flush
    loop = asyncio.create_task(reader.drain_forever(60))
    try:
        ids = [await writer.record(_exchange(owner, f"q{n}")) for n in range(30)]
        listing = await readers.list_conversations(
            history_pb2.ListConversationsRequest(owner_id=owner, page_size=50)
        )
        assert sorted(c.id for c in listing.conversations) == sorted(ids)
        assert await writer.pending() == 0
    finally:
        loop.cancel()
        await redis_client.delete(key)
        await channel.close()


async def test_gateways_take_turns_writing_the_journal(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    """Three gateways journal at once: each exchange is written to history once, not once per gateway whose
    pass found it, and none is left behind by a pass skipped for another gateway's turn."""
    key = f"journal:{uuid.uuid4().hex}"
    owner = str(uuid.uuid4())
    channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    gateways = [HistoryRecorder(HistoryClient(channel, 5, 5), redis_client, key=key) for _ in range(3)]
    loops = [asyncio.create_task(g.drain_forever(60)) for g in gateways]
    written_before = REPLAYED._value.get()
    try:
        for round_ in range(8):
            await asyncio.gather(
                *(g.record(_exchange(owner, f"q{round_}.{n}")) for n, g in enumerate(gateways * 4))
            )
            await asyncio.sleep(0.01)
        await gateways[0].flush()
        assert await gateways[0].pending() == 0
        assert REPLAYED._value.get() - written_before == 8 * 12
        listing = await gateways[0].history.list_conversations(
            history_pb2.ListConversationsRequest(owner_id=owner, page_size=100)
        )
        assert len(listing.conversations) == 8 * 12
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await redis_client.delete(key, key + TURN_SUFFIX)
        await channel.close()


async def test_a_turn_left_behind_blocks_other_gateways_until_it_expires_but_not_its_own(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    key = f"journal:{uuid.uuid4().hex}"
    channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    first, second = (HistoryRecorder(HistoryClient(channel, 5, 5), redis_client, key=key) for _ in range(2))
    try:
        # The first gateway's pass could not end its turn (Redis failed at that moment): the key is still its.
        await redis_client.set(key + TURN_SUFFIX, first._turn[1], px=10_000)
        await second.record(_exchange(str(uuid.uuid4()), "q"))
        assert await second.drain_once(wait=False) == 0
        assert await first.drain_once(wait=False) == 1
        assert not await redis_client.exists(key + TURN_SUFFIX)
    finally:
        await redis_client.delete(key, key + TURN_SUFFIX)
        await channel.close()


async def test_a_read_does_not_wait_out_the_turn_of_a_gateway_that_died_in_its_pass(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    """A gateway killed in the middle of a pass leaves its turn to run out its lease; a read through another
    gateway still sees what was journaled before it (that gateway writes without the turn), instead of
    giving up after history's deadline, read after read, until the lease ends."""
    key = f"journal:{uuid.uuid4().hex}"
    owner = str(uuid.uuid4())
    channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    history = HistoryClient(channel, 5, 5)
    alive = HistoryRecorder(history, redis_client, key=key)
    history.before_read = alive.flush
    loop = asyncio.create_task(alive.drain_forever(60))
    try:
        await redis_client.set(key + TURN_SUFFIX, "a-gateway-that-died", px=600_000)
        asked = await alive.record(_exchange(owner, "asked just before the read"))
        listing = await history.list_conversations(history_pb2.ListConversationsRequest(owner_id=owner))
        assert [c.id for c in listing.conversations] == [asked]
        assert await alive.pending() == 0
        # The dead gateway's turn is left to expire: nobody else's token may end it.
        assert await redis_client.get(key + TURN_SUFFIX) == b"a-gateway-that-died"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await redis_client.delete(key, key + TURN_SUFFIX)
        await channel.close()


async def test_a_journal_loop_cancelled_as_it_is_woken_stops(redis_client: redis.Redis) -> None:
    """Python 3.11's wait_for loses a cancellation that comes as the awaited event fires: the loop went on for
    ever (a gateway that would not stop). Woken and cancelled in the same moment, it stops."""
    channel = create_channel(f"127.0.0.1:{free_port()}")
    recorder = HistoryRecorder(HistoryClient(channel, 1, 1), redis_client, key=f"journal:{uuid.uuid4().hex}")
    loop = asyncio.create_task(recorder.drain_forever(60))
    try:
        await asyncio.sleep(0.05)  # waiting to be woken
        recorder._wake.set()
        loop.cancel()
        done, _ = await asyncio.wait({loop}, timeout=5)
        assert done and loop.cancelled()
    finally:
        loop.cancel()
        await channel.close()


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
        kept = await recorder.record(_exchange(owner, "kept in memory"))
        assert kept and await recorder.pending() == 1
        recorder.history = HistoryClient(up_channel, 5, 5)
        assert await recorder.drain_once() == 1
        listing = await recorder.history.list_conversations(
            history_pb2.ListConversationsRequest(owner_id=owner)
        )
        assert [(c.id, c.title) for c in listing.conversations] == [(kept, "kept in memory")]
        # With Redis still down and history back, an exchange is written at once.
        direct = await recorder.record(_exchange(owner, "written at once"))
        assert await recorder.pending() == 0
        listing = await recorder.history.list_conversations(
            history_pb2.ListConversationsRequest(owner_id=owner)
        )
        assert direct in {c.id for c in listing.conversations}
    finally:
        await dead_redis.aclose()
        await down_channel.close()
        await up_channel.close()


async def test_a_full_spool_asks_for_a_wait_and_drops_nothing(
    history_address: str, pki: dict[str, mtls.MtlsFiles], redis_client: redis.Redis
) -> None:
    key = f"journal:{uuid.uuid4().hex}"
    owner = str(uuid.uuid4())
    down_channel = create_channel(f"127.0.0.1:{free_port()}")
    up_channel = create_channel(history_address, mtls=pki["gateway"], server_identity="history")
    try:
        recorder = HistoryRecorder(HistoryClient(down_channel, 1, 1), redis_client, max_spooled=3, key=key)
        assert not await recorder.full()  # history has not failed yet
        for n in range(3):
            await recorder.record(_exchange(owner, f"q{n}"))
        assert not await recorder.full()  # journaled, and nobody knows yet that history is down
        await recorder.drain_once()
        # At the bound the pipeline refuses new questions (503) rather than losing an answer; one already
        # under way is still kept.
        assert await recorder.full()
        await recorder.record(_exchange(owner, "under way"))
        assert await recorder.pending() == 4
        recorder.history = HistoryClient(up_channel, 5, 5)
        assert await recorder.drain_once() == 4
        assert not await recorder.full()
    finally:
        await redis_client.delete(key)
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
