"""ExportConversations: everything of one conversation or of one owner, in order, within the caps."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from genai.history.v1 import history_pb2

from .support import Stub, append, fails_with, new_owner

BASE_MS = 1_700_000_000_000


async def export(stub: Stub, owner: str, conversation_id: str = "") -> list[history_pb2.ExportedMessage]:
    call = stub.ExportConversations(
        history_pb2.ExportConversationsRequest(owner_id=owner, conversation_id=conversation_id)
    )
    return [item async for item in call]


async def conversation_of(stub: Stub, owner: str, prompts: list[str], start_ms: int, **fields: Any) -> str:
    conversation_id = ""
    for i, prompt in enumerate(prompts):
        reply = await append(
            stub, owner, prompt=prompt, conversation_id=conversation_id, created_at_ms=start_ms + i, **fields
        )
        conversation_id = reply.conversation_id
    return conversation_id


async def test_exports_every_conversation_newest_first_with_messages_in_order(stub: Stub) -> None:
    owner = new_owner()
    older = await conversation_of(stub, owner, ["o1", "o2"], BASE_MS)
    newer = await conversation_of(
        stub, owner, ["n1", "n2", "n3"], BASE_MS + 10_000, model="smollm2", response="ответ"
    )
    await append(stub, new_owner(), prompt="someone else's")

    items = await export(stub, owner)

    assert [(i.conversation.id, i.message.prompt) for i in items] == [
        (newer, "n1"),
        (newer, "n2"),
        (newer, "n3"),
        (older, "o1"),
        (older, "o2"),
    ]
    first = items[0]
    assert first.conversation.title == "n1"
    assert first.conversation.owner_id == owner
    assert first.conversation.message_count == 3
    assert first.conversation.created_at_ms == BASE_MS + 10_000
    assert first.conversation.updated_at_ms == BASE_MS + 10_002
    assert first.message.response == "ответ"
    assert first.message.model == "smollm2"
    assert first.message.created_at_ms == BASE_MS + 10_000
    assert items[-1].conversation.message_count == 2


async def test_exports_one_conversation(stub: Stub) -> None:
    owner = new_owner()
    wanted = await conversation_of(stub, owner, ["a", "b"], BASE_MS)
    await conversation_of(stub, owner, ["other"], BASE_MS + 5000)
    items = await export(stub, owner, wanted)
    assert [(i.conversation.id, i.message.prompt) for i in items] == [(wanted, "a"), (wanted, "b")]


async def test_an_owner_without_conversations_exports_nothing(stub: Stub) -> None:
    assert await export(stub, new_owner()) == []


async def test_another_owners_conversation_is_not_found(stub: Stub) -> None:
    owner, intruder = new_owner(), new_owner()
    theirs = await conversation_of(stub, owner, ["private"], BASE_MS)
    for target in (theirs, str(uuid.uuid4()), "not-a-uuid"):
        details = await fails_with(grpc.StatusCode.NOT_FOUND, export(stub, intruder, target))
        assert details == "conversation not found"
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, export(stub, "nobody"))


async def test_exports_over_the_caps_are_refused_with_the_numbers(start_server) -> None:
    stub = await start_server(export_max_messages=3, export_max_bytes=1000)
    owner = new_owner()
    two = await conversation_of(stub, owner, ["a", "b"], BASE_MS)
    await conversation_of(stub, owner, ["c", "d"], BASE_MS + 1000)

    details = await fails_with(grpc.StatusCode.FAILED_PRECONDITION, export(stub, owner))
    assert "4 messages" in details and "3 messages" in details
    assert "one at a time" in details
    assert len(await export(stub, owner, two)) == 2

    big = await conversation_of(stub, owner, ["x" * 600, "y" * 600], BASE_MS + 2000)
    details = await fails_with(grpc.StatusCode.FAILED_PRECONDITION, export(stub, owner, big))
    assert "MB" in details
    assert "one at a time" not in details
