"""A conversation's origin: "chat" (listed in the web page) or "api" (a script's call, listed apart)."""

from __future__ import annotations

import itertools
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from genai.history.v1 import history_pb2

from genai_common.db import migrate
from genai_history.paging import Cursor
from genai_history.store import COMPONENT, MIGRATIONS_DIR, _list_page

from .support import Stub, append, fails_with, new_owner

BASE_MS = 1_700_000_000_000


async def listed(stub: Stub, owner_id: str, **fields: Any) -> list[history_pb2.ConversationSummary]:
    reply = await stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner_id, **fields))
    return list(reply.conversations)


def new_actor() -> history_pb2.Actor:
    return history_pb2.Actor(user_id=str(uuid.uuid4()), username="root")


async def test_a_new_conversation_is_api_unless_the_caller_says_chat(stub: Stub) -> None:
    owner = new_owner()
    script = await append(stub, owner, prompt="from a script")
    page = await append(stub, owner, prompt="from the page", origin="chat")
    explicit = await append(stub, owner, prompt="said api", origin="api")

    summaries = {c.id: c.origin for c in await listed(stub, owner)}
    assert summaries == {
        script.conversation_id: "api",
        page.conversation_id: "chat",
        explicit.conversation_id: "api",
    }
    got = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=page.conversation_id)
    )
    assert got.summary.origin == "chat"


async def test_an_existing_conversation_keeps_its_origin(stub: Stub) -> None:
    owner = new_owner()
    first = await append(stub, owner, prompt="first", origin="chat")
    # A later exchange of the same dialog, sent without an origin (or with the other one), changes nothing.
    await append(stub, owner, prompt="second", conversation_id=first.conversation_id)
    await append(stub, owner, prompt="third", conversation_id=first.conversation_id, origin="api")

    [summary] = await listed(stub, owner)
    assert (summary.id, summary.origin, summary.message_count) == (first.conversation_id, "chat", 3)


async def test_every_summary_carries_the_origin(stub: Stub) -> None:
    owner = new_owner()
    chat = await append(stub, owner, prompt="dialog", origin="chat")

    renamed = await stub.RenameConversation(
        history_pb2.RenameConversationRequest(owner_id=owner, conversation_id=chat.conversation_id, title="t")
    )
    assert renamed.origin == "chat"
    exported = [
        item
        async for item in stub.ExportConversations(history_pb2.ExportConversationsRequest(owner_id=owner))
    ]
    assert [item.conversation.origin for item in exported] == ["chat"]
    admin_read = await stub.AdminGetConversation(
        history_pb2.AdminGetConversationRequest(actor=new_actor(), conversation_id=chat.conversation_id)
    )
    assert admin_read.summary.origin == "chat"


async def test_the_list_filters_by_origin_and_pages_within_it(stub: Stub) -> None:
    owner = new_owner()
    chats, calls = [], []
    # Interleaved in time, so a page of one origin must skip the other's rows.
    for n in range(5):
        chat = await append(stub, owner, prompt=f"chat {n}", origin="chat", created_at_ms=BASE_MS + 2 * n)
        call = await append(stub, owner, prompt=f"call {n}", created_at_ms=BASE_MS + 2 * n + 1)
        chats.append(chat.conversation_id)
        calls.append(call.conversation_id)

    assert [c.id for c in await listed(stub, owner, origin="api")] == calls[::-1]
    everything = await listed(stub, owner)
    assert len(everything) == 10 and {c.origin for c in everything} == {"chat", "api"}

    seen: list[str] = []
    token = ""
    while True:
        reply = await stub.ListConversations(
            history_pb2.ListConversationsRequest(owner_id=owner, origin="chat", page_size=2, page_token=token)
        )
        assert all(c.origin == "chat" for c in reply.conversations)
        seen += [c.id for c in reply.conversations]
        token = reply.next_page_token
        if not token:
            break
    assert seen == chats[::-1]

    # Someone else's conversations of the same origin never show.
    assert await listed(stub, new_owner(), origin="chat") == []


async def test_unknown_origins_are_refused(stub: Stub) -> None:
    owner = new_owner()
    for origin in ("web", "CHAT", " chat", "bot"):
        details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, owner, origin=origin))
        assert "origin" in details
        await fails_with(grpc.StatusCode.INVALID_ARGUMENT, listed(stub, owner, origin=origin))
        await fails_with(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.AdminListConversations(
                history_pb2.AdminListConversationsRequest(actor=new_actor(), origin=origin)
            ),
        )
    # Also when the conversation exists and the origin would go unused.
    started = await append(stub, owner, origin="chat")
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        append(stub, owner, conversation_id=started.conversation_id, origin="web"),
    )
    assert [c.message_count for c in await listed(stub, owner)] == [1]


async def test_admins_filter_by_origin_for_one_owner_or_all(stub: Stub, pool: asyncpg.Pool) -> None:
    alice, bob = new_owner(), new_owner()
    alice_chat = await append(stub, alice, prompt="a chat", origin="chat")
    alice_call = await append(stub, alice, prompt="a call")
    bob_chat = await append(stub, bob, prompt="b chat", origin="chat")
    actor = new_actor()

    one = await stub.AdminListConversations(
        history_pb2.AdminListConversationsRequest(actor=actor, owner_id=alice, origin="api")
    )
    assert [c.id for c in one.conversations] == [alice_call.conversation_id]
    everyone = await stub.AdminListConversations(
        history_pb2.AdminListConversationsRequest(actor=actor, origin="chat", page_size=100)
    )
    ids = [c.id for c in everyone.conversations]
    assert all(c.origin == "chat" for c in everyone.conversations)
    # Newest first: bob's was stored last.
    assert ids.index(bob_chat.conversation_id) < ids.index(alice_chat.conversation_id)
    assert alice_call.conversation_id not in ids

    details = await pool.fetch(
        "SELECT details FROM audit_events WHERE actor_id = $1 ORDER BY id", uuid.UUID(actor.user_id)
    )
    assert [json.loads(row["details"])["origin"] for row in details] == ["api", "chat"]


async def test_the_database_refuses_other_origins(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO conversations (owner_id, title, origin) VALUES ($1, 'x', 'web')", uuid.uuid4()
        )
    # No default: a writer that forgets the origin fails instead of guessing one.
    with pytest.raises(asyncpg.NotNullViolationError):
        await pool.execute("INSERT INTO conversations (owner_id, title) VALUES ($1, 'x')", uuid.uuid4())


async def test_conversations_stored_before_the_migration_become_chat(
    new_database_dsn: str, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0004":
            shutil.copy(path, before / path.name)
    await migrate(new_database_dsn, COMPONENT, before)
    conn = await asyncpg.connect(new_database_dsn)
    try:
        old = await conn.fetchval(
            "INSERT INTO conversations (owner_id, title) VALUES ($1, 'old') RETURNING id", uuid.uuid4()
        )
        # 0004 and whatever came after it.
        assert (await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR))[0] == "0004_origin.sql"
        assert await conn.fetchval("SELECT origin FROM conversations WHERE id = $1", old) == "chat"
    finally:
        await conn.close()


async def test_a_page_of_one_origin_is_an_index_range(new_database_dsn: str) -> None:
    # Many owners' conversations, most of them API calls, analysed as autovacuum would. A page of the page's
    # dialogs then needs no sort and walks the index made for it, not the owner's (or everyone's) list
    # filtered by origin. Owners' lists, the page's every load, get it from the generic plan too (asyncpg
    # prepares its statements, and PostgreSQL may switch to the generic plan after five runs).
    await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR)
    conn = await asyncpg.connect(new_database_dsn)
    try:
        await conn.execute(
            """
            INSERT INTO conversations (owner_id, title, origin, created_at, updated_at)
            SELECT owners.id, 'c' || n, CASE WHEN n % 5 = 0 THEN 'chat' ELSE 'api' END,
                   now() - n * interval '1 minute', now() - n * interval '1 minute'
            FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 50)) owners,
                 generate_series(1, 100) n
            """
        )
        await conn.execute("ANALYZE conversations")
        after = Cursor(at=datetime.now(UTC), id=uuid.uuid4())
        cases = [
            (by_owner, next_page, mode)
            for by_owner, next_page in itertools.product((True, False), (False, True))
            for mode in (("force_custom_plan", "force_generic_plan") if by_owner else ("force_custom_plan",))
        ]
        for by_owner, next_page, mode in cases:
            sql, args = _list_page(
                20, uuid.uuid4() if by_owner else None, "chat", after if next_page else None
            )
            values = ", ".join(f"'{value}'" for value in args)
            await conn.execute(f"SET plan_cache_mode = {mode}")
            await conn.execute(f"PREPARE page AS {sql}")
            plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE page({values})"))
            shown = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE page({values})"))
            await conn.execute("DEALLOCATE page")
            nodes = list(_plan_nodes(plan[0]["Plan"]))
            index = (
                "conversations_owner_origin_updated_idx" if by_owner else "conversations_origin_updated_idx"
            )
            assert any(node.get("Index Name") == index for node in nodes), (mode, shown)
            assert not any(node["Node Type"] in ("Sort", "Incremental Sort") for node in nodes), (mode, shown)
    finally:
        await conn.close()


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)
