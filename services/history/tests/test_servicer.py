"""HistoryService over a real in-process gRPC server and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from genai.history.v1 import history_pb2

from genai_history.servicer import NOT_FOUND_MESSAGE
from genai_history.store import HistoryStore

from .support import Stub, make_settings, running_server

StartServer = Callable[..., Awaitable[Stub]]
BASE_MS = 1_700_000_000_000


def new_owner() -> str:
    return str(uuid.uuid4())


async def append(stub: Stub, owner_id: str, prompt: str = "hello", **fields: Any):
    fields.setdefault("response", "hi there")
    fields.setdefault("source", "model")
    return await stub.AppendExchange(
        history_pb2.AppendExchangeRequest(owner_id=owner_id, prompt=prompt, **fields)
    )


async def fails_with(code: grpc.StatusCode, call: Awaitable[Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details() or ""


async def list_all(stub: Stub, owner_id: str, **fields: Any) -> list[history_pb2.ConversationSummary]:
    reply = await stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner_id, **fields))
    return list(reply.conversations)


async def test_append_starts_a_conversation_titled_from_the_prompt(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(
        stub,
        owner,
        prompt="\n  Explain   the\tplan  \nwith details on the second line",
        response="Here it is.",
        source="cache",
        model="smollm2",
        usage=history_pb2.Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33),
        latency_ms=456,
        request_id="req-1",
        created_at_ms=BASE_MS + 123,
    )
    uuid.UUID(reply.conversation_id)
    uuid.UUID(reply.message_id)

    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=reply.conversation_id)
    )
    summary = conversation.summary
    assert summary.id == reply.conversation_id
    assert summary.title == "Explain the plan"
    assert summary.created_at_ms == summary.updated_at_ms == BASE_MS + 123
    assert summary.message_count == 1
    [message] = conversation.messages
    assert message.id == reply.message_id
    assert message.prompt == "\n  Explain   the\tplan  \nwith details on the second line"
    assert message.response == "Here it is."
    assert message.source == "cache"
    assert message.model == "smollm2"
    assert (message.usage.prompt_tokens, message.usage.completion_tokens, message.usage.total_tokens) == (
        11,
        22,
        33,
    )
    assert message.latency_ms == 456
    assert message.request_id == "req-1"
    assert message.created_at_ms == BASE_MS + 123

    [listed] = await list_all(stub, owner)
    assert listed == summary


async def test_long_first_line_is_cut_to_80_characters(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(stub, owner, prompt="a" * 200 + "\nsecond")
    [listed] = await list_all(stub, owner)
    assert listed.id == reply.conversation_id
    assert len(listed.title) == 80
    assert listed.title == "a" * 79 + "\u2026"


async def test_created_at_zero_means_now(stub: Stub) -> None:
    owner = new_owner()
    before_ms = int(time.time() * 1000)
    reply = await append(stub, owner)
    after_ms = int(time.time() * 1000)
    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=reply.conversation_id)
    )
    # The database's clock stamps the row; allow for a little skew against this process's clock.
    assert before_ms - 2000 <= conversation.messages[0].created_at_ms <= after_ms + 2000


async def test_append_to_an_existing_conversation(stub: Stub) -> None:
    owner = new_owner()
    first = await append(stub, owner, prompt="first", created_at_ms=BASE_MS)
    other = await append(stub, owner, prompt="other", created_at_ms=BASE_MS + 1000)
    assert [c.id for c in await list_all(stub, owner)] == [other.conversation_id, first.conversation_id]

    second = await append(
        stub, owner, prompt="second", conversation_id=first.conversation_id, created_at_ms=BASE_MS + 2000
    )
    assert second.conversation_id == first.conversation_id
    assert second.message_id != first.message_id

    listed = await list_all(stub, owner)
    assert [c.id for c in listed] == [first.conversation_id, other.conversation_id]
    assert listed[0].title == "first"
    assert listed[0].message_count == 2
    assert listed[0].created_at_ms == BASE_MS
    assert listed[0].updated_at_ms == BASE_MS + 2000

    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=first.conversation_id)
    )
    assert [m.prompt for m in conversation.messages] == ["first", "second"]


async def test_replayed_older_exchange_keeps_order_and_updated_at(stub: Stub) -> None:
    owner = new_owner()
    newer = await append(stub, owner, prompt="newer", created_at_ms=BASE_MS + 5000)
    await append(
        stub, owner, prompt="older", conversation_id=newer.conversation_id, created_at_ms=BASE_MS + 1000
    )
    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=newer.conversation_id)
    )
    assert [m.prompt for m in conversation.messages] == ["older", "newer"]
    assert conversation.summary.updated_at_ms == BASE_MS + 5000


async def test_another_owner_cannot_see_or_touch_a_conversation(stub: Stub, pool: asyncpg.Pool) -> None:
    owner, intruder = new_owner(), new_owner()
    mine = await append(stub, owner, prompt="private")
    conversation_id = mine.conversation_id
    unknown_id = str(uuid.uuid4())

    for target in (conversation_id, unknown_id):
        details = await fails_with(
            grpc.StatusCode.NOT_FOUND, append(stub, intruder, prompt="sneaky", conversation_id=target)
        )
        assert details == NOT_FOUND_MESSAGE
        details = await fails_with(
            grpc.StatusCode.NOT_FOUND,
            stub.GetConversation(
                history_pb2.GetConversationRequest(owner_id=intruder, conversation_id=target)
            ),
        )
        assert details == NOT_FOUND_MESSAGE
        details = await fails_with(
            grpc.StatusCode.NOT_FOUND,
            stub.DeleteConversation(
                history_pb2.DeleteConversationRequest(owner_id=intruder, conversation_id=target)
            ),
        )
        assert details == NOT_FOUND_MESSAGE

    assert await list_all(stub, intruder) == []
    [listed] = await list_all(stub, owner)
    assert listed.id == conversation_id
    assert listed.message_count == 1
    stored = await pool.fetchval("SELECT count(*) FROM messages WHERE prompt = 'sneaky'")
    assert stored == 0


async def test_malformed_ids(stub: Stub) -> None:
    owner = new_owner()
    for bad_owner in ("", "not-a-uuid"):
        await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, bad_owner))
        await fails_with(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=bad_owner)),
        )
        await fails_with(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.GetConversation(
                history_pb2.GetConversationRequest(owner_id=bad_owner, conversation_id=str(uuid.uuid4()))
            ),
        )
        await fails_with(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.DeleteConversation(
                history_pb2.DeleteConversationRequest(owner_id=bad_owner, conversation_id=str(uuid.uuid4()))
            ),
        )
    for bad_id in ("", "42", "not-a-uuid"):
        await fails_with(
            grpc.StatusCode.NOT_FOUND,
            stub.GetConversation(history_pb2.GetConversationRequest(owner_id=owner, conversation_id=bad_id)),
        )
        await fails_with(
            grpc.StatusCode.NOT_FOUND,
            stub.DeleteConversation(
                history_pb2.DeleteConversationRequest(owner_id=owner, conversation_id=bad_id)
            ),
        )
    await fails_with(grpc.StatusCode.NOT_FOUND, append(stub, owner, conversation_id="not-a-uuid"))
    assert await list_all(stub, owner) == []


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"source": ""}, "source"),
        ({"source": "gpt"}, "source"),
        ({"created_at_ms": -5}, "created_at_ms"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"usage": history_pb2.Usage(total_tokens=-3)}, "total_tokens"),
        ({"exchange_id": "x" * 300}, "exchange_id"),
    ],
)
async def test_invalid_exchange_fields(stub: Stub, fields: dict[str, Any], needle: str) -> None:
    owner = new_owner()
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, owner, **fields))
    assert needle in details
    assert await list_all(stub, owner) == []


async def test_nul_characters_are_stored_visibly(stub: Stub) -> None:
    owner = new_owner()
    reply = await append(stub, owner, prompt="a\x00b", response="c\x00")
    conversation = await stub.GetConversation(
        history_pb2.GetConversationRequest(owner_id=owner, conversation_id=reply.conversation_id)
    )
    assert conversation.messages[0].prompt == "a\ufffdb"
    assert conversation.messages[0].response == "c\ufffd"


async def test_pagination_walks_every_conversation_once(stub: Stub) -> None:
    owner = new_owner()
    created = []
    for i in range(45):
        # Three conversations share each timestamp, so the id tie-break is exercised at page edges.
        reply = await append(stub, owner, prompt=f"conversation {i}", created_at_ms=BASE_MS + (i // 3) * 1000)
        created.append((BASE_MS + (i // 3) * 1000, reply.conversation_id))

    pages: list[list[history_pb2.ConversationSummary]] = []
    token = ""
    while True:
        reply = await stub.ListConversations(
            history_pb2.ListConversationsRequest(owner_id=owner, page_size=20, page_token=token)
        )
        pages.append(list(reply.conversations))
        token = reply.next_page_token
        if not token:
            break
        assert len(pages) < 10, "pagination does not end"

    assert [len(page) for page in pages] == [20, 20, 5]
    walked = [c.id for page in pages for c in page]
    assert len(walked) == len(set(walked)) == 45
    expected = [cid for _, cid in sorted(created, key=lambda t: (t[0], uuid.UUID(t[1])), reverse=True)]
    assert walked == expected
    assert all(c.message_count == 1 for page in pages for c in page)


async def test_page_size_default_and_cap(start_server: StartServer) -> None:
    stub = await start_server(default_page_size=3, max_page_size=5)
    owner = new_owner()
    for i in range(7):
        await append(stub, owner, prompt=f"c{i}")
    assert len(await list_all(stub, owner)) == 3
    assert len(await list_all(stub, owner, page_size=4)) == 4
    assert len(await list_all(stub, owner, page_size=1000)) == 5
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner, page_size=-1)),
    )


@pytest.mark.parametrize("token", ["garbage!!", "MTIzOm5vdC1hLXV1aWQ", "bm8tY29sb24"])
async def test_invalid_page_token(stub: Stub, token: str) -> None:
    details = await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=new_owner(), page_token=token)),
    )
    assert "page_token" in details


async def test_exchange_id_makes_append_idempotent(stub: Stub) -> None:
    owner = new_owner()
    first = await append(stub, owner, prompt="spooled", exchange_id="ex-1")
    again = await append(stub, owner, prompt="spooled", exchange_id="ex-1")
    assert (again.conversation_id, again.message_id) == (first.conversation_id, first.message_id)

    # Replaying into the conversation it already went to stores nothing either.
    follow = await append(stub, owner, conversation_id=first.conversation_id, exchange_id="ex-2")
    replay = await append(stub, owner, conversation_id=first.conversation_id, exchange_id="ex-2")
    assert replay.message_id == follow.message_id

    [listed] = await list_all(stub, owner)
    assert listed.message_count == 2

    # The key is unique per owner, not globally.
    stranger = new_owner()
    theirs = await append(stub, stranger, prompt="spooled", exchange_id="ex-1")
    assert theirs.conversation_id != first.conversation_id
    assert theirs.message_id != first.message_id


async def test_concurrent_replays_store_one_exchange(stub: Stub) -> None:
    owner = new_owner()
    replies = await asyncio.gather(
        *(append(stub, owner, prompt="race", exchange_id="same") for _ in range(6))
    )
    assert len({(r.conversation_id, r.message_id) for r in replies}) == 1
    [listed] = await list_all(stub, owner)
    assert listed.message_count == 1


def exchange(owner_id: str, prompt: str = "hello", **fields: Any) -> history_pb2.AppendExchangeRequest:
    fields.setdefault("response", "hi there")
    fields.setdefault("source", "model")
    return history_pb2.AppendExchangeRequest(owner_id=owner_id, prompt=prompt, **fields)


async def test_a_batch_is_stored_at_once_and_each_exchange_answered_alone(stub: Stub) -> None:
    owner, stranger = new_owner(), new_owner()
    chosen = str(uuid.uuid4())
    theirs = await append(stub, stranger, prompt="not yours")
    batch = [
        # A new conversation with the caller's id, and a follow-up in it, in one batch.
        exchange(owner, "first", conversation_id=chosen, start_conversation=True, exchange_id="b-1"),
        exchange(owner, "second", conversation_id=chosen, exchange_id="b-2"),
        # Refused alone: bad fields, another owner's conversation, no conversation named at all.
        exchange(owner, "bad", conversation_id=chosen, source="guess", exchange_id="b-3"),
        exchange(owner, "intrusion", conversation_id=theirs.conversation_id, exchange_id="b-4"),
        exchange(owner, "nowhere", exchange_id="b-5"),
        # A repeat of the first, as another gateway's pass would send it: the stored ids come back.
        exchange(owner, "first", conversation_id=chosen, start_conversation=True, exchange_id="b-1"),
    ]
    reply = await stub.AppendExchanges(history_pb2.AppendExchangesRequest(exchanges=batch))
    codes = [r.error_code for r in reply.results]
    assert codes == ["", "", "INVALID_ARGUMENT", "NOT_FOUND", "INVALID_ARGUMENT", ""]
    first, second, *_, repeat = reply.results
    assert first.conversation_id == second.conversation_id == repeat.conversation_id == chosen
    assert repeat.message_id == first.message_id != second.message_id
    assert "source" in reply.results[2].error and reply.results[3].error == NOT_FOUND_MESSAGE

    [listed] = await list_all(stub, owner)
    assert (listed.id, listed.title, listed.message_count) == (chosen, "first", 2)
    [untouched] = await list_all(stub, stranger)
    assert untouched.message_count == 1

    # A conversation id another owner already has is not taken over: nothing is stored.
    clash = await stub.AppendExchanges(
        history_pb2.AppendExchangesRequest(
            exchanges=[exchange(owner, "x", conversation_id=theirs.conversation_id, start_conversation=True)]
        )
    )
    assert [r.error_code for r in clash.results] == ["NOT_FOUND"]
    assert len(await list_all(stub, owner)) == 1


async def test_a_deleted_conversation_is_not_started_again_by_a_late_repeat_of_its_exchange(
    stub: Stub,
) -> None:
    """A gateway's journal retries a batch whose answer it missed; arriving after the owner deleted the
    conversation, the repeat must not bring the deleted dialog back under the same id."""
    owner, chosen = new_owner(), str(uuid.uuid4())
    batch = history_pb2.AppendExchangesRequest(
        exchanges=[
            exchange(owner, "secret", conversation_id=chosen, start_conversation=True, exchange_id="d-1")
        ]
    )
    assert [r.error_code for r in (await stub.AppendExchanges(batch)).results] == [""]
    await stub.DeleteConversation(
        history_pb2.DeleteConversationRequest(owner_id=owner, conversation_id=chosen)
    )

    assert [r.error_code for r in (await stub.AppendExchanges(batch)).results] == ["NOT_FOUND"]
    await fails_with(
        grpc.StatusCode.NOT_FOUND,
        append(
            stub, owner, prompt="secret", conversation_id=chosen, start_conversation=True, exchange_id="d-1"
        ),
    )
    assert await list_all(stub, owner) == []
    # Only that owner's id is barred: the record of a deletion is not a way to block someone else's.
    stranger = new_owner()
    taken = await append(stub, stranger, prompt="mine", conversation_id=chosen, start_conversation=True)
    assert taken.conversation_id == chosen


async def test_append_starts_a_conversation_with_the_callers_id(stub: Stub) -> None:
    owner, chosen = new_owner(), str(uuid.uuid4())
    reply = await append(stub, owner, prompt="named", conversation_id=chosen, start_conversation=True)
    again = await append(stub, owner, prompt="named", conversation_id=chosen, start_conversation=True)
    assert reply.conversation_id == again.conversation_id == chosen
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        append(stub, owner, conversation_id="not-a-uuid", start_conversation=True),
    )
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, owner, start_conversation=True))


async def test_get_returns_the_newest_messages_in_order(start_server: StartServer) -> None:
    stub = await start_server(max_messages=5)
    owner = new_owner()
    conversation_id = ""
    for i in range(8):
        reply = await append(
            stub, owner, prompt=f"p{i}", conversation_id=conversation_id, created_at_ms=BASE_MS + i * 1000
        )
        conversation_id = reply.conversation_id

    async def prompts(max_messages: int) -> list[str]:
        conversation = await stub.GetConversation(
            history_pb2.GetConversationRequest(
                owner_id=owner, conversation_id=conversation_id, max_messages=max_messages
            )
        )
        assert conversation.summary.message_count == 8
        return [m.prompt for m in conversation.messages]

    assert await prompts(0) == ["p3", "p4", "p5", "p6", "p7"]
    assert await prompts(3) == ["p5", "p6", "p7"]
    assert await prompts(50) == ["p3", "p4", "p5", "p6", "p7"]
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, prompts(-1))


async def test_text_longer_than_the_cap_is_refused(start_server: StartServer) -> None:
    stub = await start_server(max_text_chars=50)
    owner = new_owner()
    await append(stub, owner, prompt="p" * 50, response="r" * 50)
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, owner, prompt="p" * 51))
    assert "prompt" in details
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, append(stub, owner, response="r" * 51))
    assert "response" in details
    [listed] = await list_all(stub, owner)
    assert listed.message_count == 1


async def test_delete_removes_the_conversation_and_its_messages(stub: Stub, pool: asyncpg.Pool) -> None:
    owner = new_owner()
    doomed = await append(stub, owner, prompt="one")
    for prompt in ("two", "three"):
        await append(stub, owner, prompt=prompt, conversation_id=doomed.conversation_id)
    kept = await append(stub, owner, prompt="keep me")
    doomed_id = uuid.UUID(doomed.conversation_id)
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", doomed_id) == 3

    await stub.DeleteConversation(
        history_pb2.DeleteConversationRequest(owner_id=owner, conversation_id=doomed.conversation_id)
    )

    assert await pool.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", doomed_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM conversations WHERE id = $1", doomed_id) == 0
    await fails_with(
        grpc.StatusCode.NOT_FOUND,
        stub.GetConversation(
            history_pb2.GetConversationRequest(owner_id=owner, conversation_id=doomed.conversation_id)
        ),
    )
    await fails_with(
        grpc.StatusCode.NOT_FOUND,
        stub.DeleteConversation(
            history_pb2.DeleteConversationRequest(owner_id=owner, conversation_id=doomed.conversation_id)
        ),
    )
    assert [c.id for c in await list_all(stub, owner)] == [kept.conversation_id]


async def test_unreachable_database_is_unavailable(history_dsn: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dead_dsn = f"postgresql://nobody@127.0.0.1:{closed_port}/none"
    dead_pool = await asyncpg.create_pool(dead_dsn, min_size=0, max_size=1, timeout=2)
    try:
        async with running_server(HistoryStore(dead_pool), make_settings(history_dsn)) as stub:
            await fails_with(grpc.StatusCode.UNAVAILABLE, append(stub, new_owner()))
            await fails_with(
                grpc.StatusCode.UNAVAILABLE,
                stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=new_owner())),
            )
    finally:
        await dead_pool.close()
