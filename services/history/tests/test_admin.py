"""Admin reads of any owner's dialogs, each one written to the audit log before data is returned."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import grpc
import pytest
from genai.history.v1 import history_pb2

from genai_common.db import create_pool
from genai_history.store import HistoryStore

from .support import Stub, append, fails_with, make_settings, new_owner, running_server

BASE_MS = 1_700_000_000_000


def new_actor(**fields: str) -> history_pb2.Actor:
    return history_pb2.Actor(user_id=str(uuid.uuid4()), username=f"admin-{uuid.uuid4().hex[:6]}", **fields)


async def events_of(pool: asyncpg.Pool, actor: history_pb2.Actor) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM audit_events WHERE actor_id = $1 ORDER BY id", uuid.UUID(actor.user_id)
    )


async def test_admin_reads_any_conversation_and_the_read_is_recorded(stub: Stub, pool: asyncpg.Pool) -> None:
    owner = new_owner()
    first = await append(stub, owner, prompt="private one", created_at_ms=BASE_MS)
    await append(stub, owner, prompt="private two", conversation_id=first.conversation_id)
    actor = new_actor()

    conversation = await stub.AdminGetConversation(
        history_pb2.AdminGetConversationRequest(actor=actor, conversation_id=first.conversation_id),
        metadata=(("x-request-id", "req-admin-1"),),
    )

    assert conversation.summary.owner_id == owner
    assert [m.prompt for m in conversation.messages] == ["private one", "private two"]
    [event] = await events_of(pool, actor)
    assert event["action"] == "read_conversation"
    assert event["actor_username"] == actor.username
    assert str(event["target_owner_id"]) == owner
    assert str(event["target_conversation_id"]) == first.conversation_id
    assert event["request_id"] == "req-admin-1"
    assert json.loads(event["details"]) == {"messages": 2}
    assert event["at"] is not None


async def test_reading_a_missing_conversation_records_nothing(stub: Stub, pool: asyncpg.Pool) -> None:
    actor = new_actor()
    for target in (str(uuid.uuid4()), "not-a-uuid"):
        await fails_with(
            grpc.StatusCode.NOT_FOUND,
            stub.AdminGetConversation(
                history_pb2.AdminGetConversationRequest(actor=actor, conversation_id=target)
            ),
        )
    assert await events_of(pool, actor) == []


@pytest.mark.parametrize(
    "actor",
    [
        history_pb2.Actor(),
        history_pb2.Actor(user_id="not-a-uuid", username="root"),
        history_pb2.Actor(user_id=str(uuid.uuid4()), username="  "),
        history_pb2.Actor(user_id=str(uuid.uuid4()), username="x" * 257),
    ],
)
async def test_admin_calls_need_an_actor(stub: Stub, pool: asyncpg.Pool, actor: history_pb2.Actor) -> None:
    owner = new_owner()
    reply = await append(stub, owner)
    before = await pool.fetchval("SELECT count(*) FROM audit_events")
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.AdminGetConversation(
            history_pb2.AdminGetConversationRequest(actor=actor, conversation_id=reply.conversation_id)
        ),
    )
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.AdminListConversations(history_pb2.AdminListConversationsRequest(actor=actor)),
    )
    call = stub.AdminExportConversations(
        history_pb2.AdminExportConversationsRequest(actor=actor, conversation_id=reply.conversation_id)
    )
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, call.read())
    assert await pool.fetchval("SELECT count(*) FROM audit_events") == before


async def test_admin_lists_one_owner_or_everyone_and_each_page_is_recorded(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    alice, bob = new_owner(), new_owner()
    a1 = await append(stub, alice, prompt="a1", created_at_ms=BASE_MS)
    a2 = await append(stub, alice, prompt="a2", created_at_ms=BASE_MS + 1000)
    await append(stub, alice, prompt="a3", created_at_ms=BASE_MS + 2000)
    b1 = await append(stub, bob, prompt="b1")
    actor = new_actor(api_key_id="key-123")

    first = await stub.AdminListConversations(
        history_pb2.AdminListConversationsRequest(actor=actor, owner_id=alice, page_size=2)
    )
    assert [c.title for c in first.conversations] == ["a3", "a2"]
    assert all(c.owner_id == alice for c in first.conversations)
    second = await stub.AdminListConversations(
        history_pb2.AdminListConversationsRequest(
            actor=actor, owner_id=alice, page_size=2, page_token=first.next_page_token
        )
    )
    assert [c.id for c in second.conversations] == [a1.conversation_id]
    assert second.next_page_token == ""
    assert a2.conversation_id in {c.id for c in first.conversations}

    everyone = await stub.AdminListConversations(history_pb2.AdminListConversationsRequest(actor=actor))
    # b1 was stored last (now), so it leads the list of every owner's conversations.
    assert everyone.conversations[0].id == b1.conversation_id
    assert everyone.conversations[0].owner_id == bob

    events = await events_of(pool, actor)
    assert [e["action"] for e in events] == ["list_conversations"] * 3
    assert [str(e["target_owner_id"]) if e["target_owner_id"] else None for e in events] == [
        alice,
        alice,
        None,
    ]
    assert json.loads(events[0]["details"]) == {
        "page_size": 2,
        "returned": 2,
        "next_page": False,
        "api_key_id": "key-123",
    }
    assert json.loads(events[1]["details"])["next_page"] is True


async def test_admin_list_refuses_a_bad_owner_or_token(stub: Stub) -> None:
    actor = new_actor()
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.AdminListConversations(history_pb2.AdminListConversationsRequest(actor=actor, owner_id="x")),
    )
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.AdminListConversations(history_pb2.AdminListConversationsRequest(actor=actor, page_token="!!")),
    )


async def test_admin_exports_a_conversation_or_a_user(stub: Stub, pool: asyncpg.Pool) -> None:
    owner = new_owner()
    one = await append(stub, owner, prompt="one", created_at_ms=BASE_MS)
    await append(stub, owner, prompt="two", created_at_ms=BASE_MS + 1000)
    actor = new_actor()

    call = stub.AdminExportConversations(
        history_pb2.AdminExportConversationsRequest(actor=actor, conversation_id=one.conversation_id)
    )
    assert [i.message.prompt async for i in call] == ["one"]
    call = stub.AdminExportConversations(
        history_pb2.AdminExportConversationsRequest(actor=actor, owner_id=owner)
    )
    assert [i.message.prompt async for i in call] == ["two", "one"]

    events = await events_of(pool, actor)
    assert [(e["action"], str(e["target_owner_id"]), e["target_conversation_id"]) for e in events] == [
        ("export_conversation", owner, uuid.UUID(one.conversation_id)),
        ("export_user", owner, None),
    ]
    assert json.loads(events[1]["details"])["messages"] == 2


async def test_admin_export_is_recorded_before_the_first_message(history_dsn: str) -> None:
    own_pool = await create_pool(history_dsn, max_size=3)
    try:
        async with running_server(HistoryStore(own_pool), make_settings(history_dsn)) as stub:
            owner = new_owner()
            for i in range(300):
                await append(stub, owner, prompt=f"m{i}")
            actor = new_actor()
            call = stub.AdminExportConversations(
                history_pb2.AdminExportConversationsRequest(actor=actor, owner_id=owner)
            )
            first = await call.read()
            assert first.message.prompt.startswith("m")
            call.cancel()
            [event] = await events_of(own_pool, actor)
            assert event["action"] == "export_user"
            # The export's connection (and its open transaction) goes back to the pool at once.
            for _ in range(50):
                if own_pool.get_idle_size() == own_pool.get_size():
                    break
                await asyncio.sleep(0.1)
            assert own_pool.get_idle_size() == own_pool.get_size()
    finally:
        await own_pool.close()


async def test_refused_admin_exports_record_nothing(start_server, pool: asyncpg.Pool) -> None:
    stub = await start_server(export_max_messages=1)
    owner = new_owner()
    reply = await append(stub, owner)
    await append(stub, owner, conversation_id=reply.conversation_id)
    actor = new_actor()
    for request in (
        history_pb2.AdminExportConversationsRequest(actor=actor, conversation_id=reply.conversation_id),
        history_pb2.AdminExportConversationsRequest(actor=actor, owner_id=owner),
    ):
        await fails_with(grpc.StatusCode.FAILED_PRECONDITION, stub.AdminExportConversations(request).read())
    await fails_with(
        grpc.StatusCode.NOT_FOUND,
        stub.AdminExportConversations(
            history_pb2.AdminExportConversationsRequest(actor=actor, conversation_id=str(uuid.uuid4()))
        ).read(),
    )
    details = await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.AdminExportConversations(history_pb2.AdminExportConversationsRequest(actor=actor)).read(),
    )
    assert "owner_id" in details
    assert await events_of(pool, actor) == []


async def test_admin_export_of_a_conversation_checks_the_owner_when_given(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(stub, owner)
    call = stub.AdminExportConversations(
        history_pb2.AdminExportConversationsRequest(
            actor=new_actor(), conversation_id=reply.conversation_id, owner_id=new_owner()
        )
    )
    await fails_with(grpc.StatusCode.NOT_FOUND, call.read())
