"""RenameConversation: the owner retitles a conversation; nobody else can."""

from __future__ import annotations

import uuid

import grpc
import pytest
from genai.history.v1 import history_pb2

from .support import Stub, append, fails_with, new_owner

BASE_MS = 1_700_000_000_000


def rename(stub: Stub, owner: str, conversation_id: str, title: str):
    return stub.RenameConversation(
        history_pb2.RenameConversationRequest(owner_id=owner, conversation_id=conversation_id, title=title)
    )


async def test_rename_sets_the_title_and_keeps_the_place_in_the_list(stub: Stub) -> None:
    owner = new_owner()
    first = await append(stub, owner, prompt="first", created_at_ms=BASE_MS)
    second = await append(stub, owner, prompt="second", created_at_ms=BASE_MS + 1000)

    summary = await rename(stub, owner, first.conversation_id, "  Планы   на\nнеделю  ")

    assert summary.id == first.conversation_id
    assert summary.title == "Планы на неделю"
    assert summary.owner_id == owner
    assert summary.updated_at_ms == BASE_MS
    assert summary.message_count == 1
    listed = await stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner))
    assert [(c.id, c.title) for c in listed.conversations] == [
        (second.conversation_id, "second"),
        (first.conversation_id, "Планы на неделю"),
    ]


async def test_title_of_exactly_200_characters_is_kept(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(stub, owner)
    summary = await rename(stub, owner, reply.conversation_id, "я" * 200)
    assert summary.title == "я" * 200


@pytest.mark.parametrize("title", ["", "   \n\t ", "x" * 201])
async def test_empty_or_long_titles_are_refused(stub: Stub, title: str) -> None:
    owner = new_owner()
    reply = await append(stub, owner, prompt="unchanged")
    details = await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT, rename(stub, owner, reply.conversation_id, title)
    )
    assert "1 to 200" in details
    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=reply.conversation_id)
    )
    assert conversation.summary.title == "unchanged"


async def test_another_owner_cannot_rename(stub: Stub) -> None:
    owner, intruder = new_owner(), new_owner()
    reply = await append(stub, owner, prompt="mine")
    for target in (reply.conversation_id, str(uuid.uuid4()), "not-a-uuid"):
        await fails_with(grpc.StatusCode.NOT_FOUND, rename(stub, intruder, target, "taken"))
    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=reply.conversation_id)
    )
    assert conversation.summary.title == "mine"
