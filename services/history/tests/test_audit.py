"""The audit log is append-only, and admins page through it newest first."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from genai.history.v1 import history_pb2

from .support import Stub, append, fails_with, new_owner


async def insert(pool: asyncpg.Pool, actor_id: uuid.UUID, at: str = "now") -> int:
    return await pool.fetchval(
        "INSERT INTO audit_events (actor_id, actor_username, action, at)"
        " VALUES ($1, 'tester', 'read_conversation', $2::text::timestamptz) RETURNING id",
        actor_id,
        at,
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor_username = 'someone else' WHERE id = $1",
        "DELETE FROM audit_events WHERE id = $1",
    ],
)
async def test_events_cannot_be_changed_or_deleted(pool: asyncpg.Pool, statement: str) -> None:
    event_id = await insert(pool, uuid.uuid4())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement, event_id)
    assert await pool.fetchval("SELECT actor_username FROM audit_events WHERE id = $1", event_id) == "tester"


async def test_the_table_cannot_be_truncated(pool: asyncpg.Pool) -> None:
    await insert(pool, uuid.uuid4())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute("TRUNCATE audit_events")
    assert await pool.fetchval("SELECT count(*) FROM audit_events") > 0


async def test_retention_cutoff_lets_only_older_events_go(pool: asyncpg.Pool) -> None:
    actor = uuid.uuid4()
    old = await insert(pool, actor, "1999-06-01T00:00:00Z")
    recent = await insert(pool, actor)
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT set_config('genai.audit_purge_before', '2000-01-01T00:00:00Z', true)")
            await conn.execute("DELETE FROM audit_events WHERE id = $1", old)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('genai.audit_purge_before', '2000-01-01T00:00:00Z', true)"
                )
                await conn.execute("DELETE FROM audit_events WHERE id = $1", recent)
        # The cutoff lasted for its transaction only.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_events WHERE actor_id = $1", actor)
    assert [r["id"] for r in await pool.fetch("SELECT id FROM audit_events WHERE actor_id = $1", actor)] == [
        recent
    ]


async def test_unknown_actions_are_refused_by_the_table(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO audit_events (actor_id, actor_username, action) VALUES ($1, 'x', 'delete_everything')",
            uuid.uuid4(),
        )


async def test_list_pages_newest_first(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(stub, owner)
    actor = history_pb2.Actor(user_id=str(uuid.uuid4()), username="Аудитор")
    for _ in range(3):
        await stub.AdminGetConversation(
            history_pb2.AdminGetConversationRequest(actor=actor, conversation_id=reply.conversation_id)
        )
    await stub.AdminListConversations(history_pb2.AdminListConversationsRequest(actor=actor, owner_id=owner))

    # Tests run one at a time, so this test's four events are the newest.
    first = await stub.ListAuditEvents(history_pb2.ListAuditEventsRequest(page_size=3))
    second = await stub.ListAuditEvents(
        history_pb2.ListAuditEventsRequest(page_size=1, page_token=first.next_page_token)
    )
    events = [*first.events, *second.events]
    assert [e.action for e in events] == ["list_conversations"] + ["read_conversation"] * 3
    assert all(e.actor_id == actor.user_id and e.actor_username == "Аудитор" for e in events)
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert events[1].target_owner_id == owner
    assert events[1].target_conversation_id == reply.conversation_id
    assert events[0].target_conversation_id == ""
    assert events[1].details_json == '{"messages": 1}'
    assert events[1].at_ms > 0 and events[1].request_id
    assert second.next_page_token


async def test_list_refuses_bad_tokens_and_sizes(stub: Stub) -> None:
    for token in ("!!", "MTIz"):
        details = await fails_with(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.ListAuditEvents(history_pb2.ListAuditEventsRequest(page_token=token)),
        )
        assert "page_token" in details
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListAuditEvents(history_pb2.ListAuditEventsRequest(page_size=-1)),
    )


async def test_list_page_size_is_capped(start_server, pool: asyncpg.Pool) -> None:
    stub = await start_server(max_page_size=2, default_page_size=1)
    for _ in range(3):
        await insert(pool, uuid.uuid4())
    assert len((await stub.ListAuditEvents(history_pb2.ListAuditEventsRequest())).events) == 1
    assert len((await stub.ListAuditEvents(history_pb2.ListAuditEventsRequest(page_size=99))).events) == 2
