"""A deleted conversation stays deleted: a gateway journal's late repeat of its first exchange, even one that
arrives while the delete is still being committed, does not start it again."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from genai_history.store import _DELETE_CONVERSATION, Append, ConversationNotFound, Exchange, HistoryStore


async def _rows(pool: asyncpg.Pool, conversation_id: uuid.UUID) -> tuple[int, int, int]:
    """(conversations, messages, deletion records) of this id."""
    return (
        await pool.fetchval("SELECT count(*) FROM conversations WHERE id = $1", conversation_id),
        await pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conversation_id),
        await pool.fetchval("SELECT count(*) FROM deleted_conversations WHERE id = $1", conversation_id),
    )


async def _waits_for_a_lock(pool: asyncpg.Pool, pid: int) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> $1 AND wait_event_type = 'Lock'"
            " AND query LIKE '%INSERT INTO conversations%'",
            pid,
        )
    )


@pytest.mark.parametrize("batch", [False, True], ids=["one exchange", "a batch"])
async def test_a_repeat_that_meets_the_delete_half_way_does_not_start_the_conversation_again(
    pool: asyncpg.Pool, batch: bool
) -> None:
    store = HistoryStore(pool)
    owner, chosen = uuid.uuid4(), uuid.uuid4()
    first = Exchange(
        prompt="secret", response="r", source="model", exchange_id=f"x-{chosen}", created_at=datetime.now(UTC)
    )
    await store.append_exchange(owner, chosen, "t", first, start=True)
    async with pool.acquire() as deleter:
        deleting = deleter.transaction()
        await deleting.start()
        # What `HistoryStore.delete_conversation` runs, in a transaction the test holds open.
        assert await deleter.fetchval(_DELETE_CONVERSATION, chosen, owner) == chosen
        # The journal repeats the first exchange (its answer was lost) while the delete is not committed:
        # the start's ON CONFLICT waits for the row the delete holds.
        if batch:
            item = Append(
                owner_id=owner, conversation_id=chosen, title="t", exchange=first, origin="chat", start=True
            )
            repeat = asyncio.ensure_future(store.append_exchanges([item]))
        else:
            repeat = asyncio.ensure_future(store.append_exchange(owner, chosen, "t", first, start=True))
        pid = await deleter.fetchval("SELECT pg_backend_pid()")
        for _ in range(400):
            if await _waits_for_a_lock(pool, pid) or repeat.done():
                break
            await asyncio.sleep(0.025)
        assert not repeat.done(), "the repeat did not wait for the delete"
        await deleting.commit()
    if batch:
        assert await repeat == [None]
    else:
        with pytest.raises(ConversationNotFound):
            await repeat
    assert await _rows(pool, chosen) == (0, 0, 1), "the deleted conversation came back"
