"""SearchMessages: PostgreSQL full-text search over the owner's own prompts and responses."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import pytest
from genai.history.v1 import history_pb2

from .support import Stub, append, fails_with, new_owner

BASE_MS = 1_700_000_000_000


async def search(stub: Stub, owner: str, query: str, **fields) -> history_pb2.SearchMessagesResponse:
    return await stub.SearchMessages(history_pb2.SearchMessagesRequest(owner_id=owner, query=query, **fields))


def word() -> str:
    """A word no other test writes, so hits can be counted exactly."""
    return "w" + uuid.uuid4().hex[:12]


async def test_finds_prompts_and_responses_in_russian_and_english(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    in_prompt = await append(stub, owner, prompt=f"Расскажи про Кошек {tag}", response="Они мурлычут.")
    in_response = await append(stub, owner, prompt="Tell me", response=f"Cats purr {tag} loudly.")
    await append(stub, owner, prompt="Unrelated", response="Nothing here")

    reply = await search(stub, owner, tag)
    assert {h.message_id for h in reply.hits} == {in_prompt.message_id, in_response.message_id}

    # Case differs: still found.
    [hit] = (await search(stub, owner, "КОШЕК")).hits
    assert hit.message_id == in_prompt.message_id
    assert hit.conversation_id == in_prompt.conversation_id
    assert hit.conversation_title == f"Расскажи про Кошек {tag}"
    assert "«Кошек»" in hit.snippet
    assert hit.created_at_ms > 0
    [hit] = (await search(stub, owner, "purr")).hits
    assert hit.message_id == in_response.message_id


async def test_snippets_are_plain_text_with_guillemets(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    await append(stub, owner, prompt="q", response=f"<img src=x onerror=alert(1)> {tag} <script>x</script>")
    [hit] = (await search(stub, owner, tag)).hits
    assert f"«{tag}»" in hit.snippet
    # Plain text: no markup of its own, and nothing escaped for HTML (showing it as text is the client's job).
    assert "<b>" not in hit.snippet
    assert "&lt;" not in hit.snippet and "&gt;" not in hit.snippet


async def test_websearch_syntax(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    fox = await append(stub, owner, prompt=f"{tag} the quick brown fox")
    dog = await append(stub, owner, prompt=f"{tag} the quick lazy dog")
    assert [h.message_id for h in (await search(stub, owner, f'{tag} "quick brown"')).hits] == [
        fox.message_id
    ]
    assert [h.message_id for h in (await search(stub, owner, f"{tag} -fox")).hits] == [dog.message_id]
    both = await search(stub, owner, f"{tag} fox or dog")
    assert {h.message_id for h in both.hits} == {fox.message_id, dog.message_id}


async def test_other_owners_messages_are_never_found(stub: Stub) -> None:
    owner, other = new_owner(), new_owner()
    tag = word()
    await append(stub, other, prompt=f"secret {tag}")
    assert list((await search(stub, owner, tag)).hits) == []
    assert len((await search(stub, other, tag)).hits) == 1


async def test_pages_newest_first(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    ids = []
    for i in range(5):
        reply = await append(stub, owner, prompt=f"{tag} number {i}", created_at_ms=BASE_MS + (i // 2) * 1000)
        ids.append((BASE_MS + (i // 2) * 1000, reply.message_id))
    expected = [mid for _, mid in sorted(ids, key=lambda t: (t[0], uuid.UUID(t[1])), reverse=True)]

    walked, token, pages = [], "", 0
    while True:
        reply = await search(stub, owner, tag, page_size=2, page_token=token)
        assert len(reply.hits) <= 2
        walked += [h.message_id for h in reply.hits]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert walked == expected
    assert pages == 3


async def test_page_size_is_capped(start_server) -> None:
    stub = await start_server(max_page_size=3, default_page_size=2)
    owner = new_owner()
    tag = word()
    for i in range(5):
        await append(stub, owner, prompt=f"{tag} {i}")
    assert len((await search(stub, owner, tag)).hits) == 2
    assert len((await search(stub, owner, tag, page_size=500)).hits) == 3


@pytest.mark.parametrize(("query", "needle"), [("", "empty"), ("   ", "empty"), ("x" * 501, "500")])
async def test_bad_queries(stub: Stub, query: str, needle: str) -> None:
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, search(stub, new_owner(), query))
    assert needle in details


async def test_bad_owner_and_token(stub: Stub) -> None:
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, search(stub, "nope", "x"))
    details = await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT, search(stub, new_owner(), "x", page_token="garbage!!")
    )
    assert "page_token" in details


async def test_query_without_words_finds_nothing(stub: Stub) -> None:
    owner = new_owner()
    await append(stub, owner, prompt="!!! ???")
    assert list((await search(stub, owner, "!!! ???")).hits) == []


async def test_huge_texts_are_stored_and_their_beginning_is_searchable(
    stub: Stub, pool: asyncpg.Pool
) -> None:
    # 200,000 characters of distinct short words would make a tsvector over PostgreSQL's 1 MB limit if the
    # whole text were indexed; the indexed part is bounded, so the exchange is stored all the same.
    owner = new_owner()
    tag = word()
    distinct = " ".join(format(i, "x") for i in range(40_000))[:199_000]
    reply = await append(stub, owner, prompt=f"{tag} {distinct}", response=distinct)
    stored = await pool.fetchval(
        "SELECT length(prompt) + length(response) FROM messages WHERE id = $1", uuid.UUID(reply.message_id)
    )
    assert stored > 390_000
    [hit] = (await search(stub, owner, tag)).hits
    assert hit.message_id == reply.message_id


async def test_word_forms_in_russian_and_english(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    winter = await append(stub, owner, prompt=f"{tag} Какая зима будет в этом году?", response="Холодная.")
    hedgehog = await append(stub, owner, prompt=f"{tag} Нарисуй ёжика", response="Вот ёжик в тумане.")
    running = await append(
        stub, owner, prompt=f"{tag} Why are my tests failing?", response="The runner crashed."
    )

    assert [h.message_id for h in (await search(stub, owner, "зиму")).hits] == [winter.message_id]
    assert [h.message_id for h in (await search(stub, owner, "зимой")).hits] == [winter.message_id]
    # ё and е alike, both ways, and the original word highlighted as written.
    [hit] = (await search(stub, owner, "ежик")).hits
    assert hit.message_id == hedgehog.message_id
    assert "«ёжик»" in hit.snippet
    assert [h.message_id for h in (await search(stub, owner, "ёжика")).hits] == [hedgehog.message_id]
    # English stemming: "test" finds "tests", "failed" finds "failing".
    assert [h.message_id for h in (await search(stub, owner, "test failed")).hits] == [running.message_id]
    # A word the stemmers do not relate is not found.
    assert list((await search(stub, owner, "лето")).hits) == []


async def test_a_query_of_stop_words_finds_them_as_written(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    it = await append(stub, owner, prompt=f"{tag} Ask IT about the printer", response="Что это?")
    [hit] = (await search(stub, owner, "IT")).hits
    assert hit.message_id == it.message_id
    assert "«IT»" in hit.snippet
    assert [h.message_id for h in (await search(stub, owner, "что")).hits] == [it.message_id]


async def test_more_relevant_first_then_newest(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    once_old = await append(stub, owner, prompt=f"{tag} printer", created_at_ms=BASE_MS)
    often = await append(
        stub, owner, prompt=f"{tag} printer jams, the printer driver, printers", created_at_ms=BASE_MS + 1000
    )
    once_new = await append(stub, owner, prompt=f"{tag} printer", created_at_ms=BASE_MS + 2000)
    expected = [often.message_id, once_new.message_id, once_old.message_id]
    assert [h.message_id for h in (await search(stub, owner, f"{tag} printer")).hits] == expected

    walked, token = [], ""
    while True:
        reply = await search(stub, owner, f"{tag} printer", page_size=1, page_token=token)
        walked += [h.message_id for h in reply.hits]
        token = reply.next_page_token
        if not token:
            break
    assert walked == expected


async def test_page_tokens_of_other_lists_are_refused(stub: Stub) -> None:
    owner = new_owner()
    tag = word()
    for i in range(3):
        await append(stub, owner, prompt=f"{tag} {i}")
    listing = await stub.ListConversations(history_pb2.ListConversationsRequest(owner_id=owner, page_size=1))
    assert listing.next_page_token
    details = await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT, search(stub, owner, tag, page_token=listing.next_page_token)
    )
    assert "page_token" in details
