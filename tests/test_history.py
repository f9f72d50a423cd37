"""Dialog history: each exchange is recorded, and only its owner can see or delete it."""

from __future__ import annotations

import uuid

from tests.harness import RunningStack, User


def _ask(live: RunningStack, user: User, prompt: str) -> dict[str, object]:
    with live.client() as client:
        response = client.post("/ask", json={"prompt": prompt, "max_tokens": 8}, headers=user.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_history_lists_the_users_exchanges(live: RunningStack, user: User) -> None:
    prompts = [f"History check {i} {uuid.uuid4().hex[:6]}" for i in range(3)]
    answers = [_ask(live, user, p) for p in prompts]
    with live.client() as client:
        listing = client.get("/api/v1/history", headers=user.headers)
        assert listing.status_code == 200
        conversations = listing.json()["conversations"]
        assert sorted(c["title"] for c in conversations) == sorted(prompts)
        conversation = client.get(
            f"/api/v1/history/{answers[0]['conversation_id']}", headers=user.headers
        ).json()
    [message] = conversation["messages"]
    assert message["prompt"] == prompts[0]
    assert message["response"] == answers[0]["response"]
    assert message["source"] == "model"
    assert message["model"] == "smollm2-135m-instruct"
    assert message["request_id"] == answers[0]["request_id"]
    assert message["usage"]["completion_tokens"] > 0


def test_history_is_paged(live: RunningStack, user: User) -> None:
    for i in range(3):
        _ask(live, user, f"Paging {i} {uuid.uuid4().hex[:6]}")
    seen: list[str] = []
    cursor = ""
    with live.client() as client:
        while True:
            page = client.get(
                "/api/v1/history", params={"limit": 2, "cursor": cursor}, headers=user.headers
            ).json()
            assert len(page["conversations"]) <= 2
            seen += [c["id"] for c in page["conversations"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        too_big = client.get("/api/v1/history", params={"limit": 10_000}, headers=user.headers)
    assert len(seen) == len(set(seen)) == 3
    assert too_big.status_code == 422


def test_another_user_cannot_list_read_or_delete(live: RunningStack, user: User) -> None:
    answer = _ask(live, user, f"Private question {uuid.uuid4().hex[:6]}")
    conversation_id = answer["conversation_id"]
    intruder = live.new_user()
    with live.client() as client:
        assert client.get("/api/v1/history", headers=intruder.headers).json()["conversations"] == []
        read = client.get(f"/api/v1/history/{conversation_id}", headers=intruder.headers)
        delete = client.delete(f"/api/v1/history/{conversation_id}", headers=intruder.headers)
        assert read.status_code == 404
        assert delete.status_code == 404
        # Still there for its owner, who can delete it.
        assert client.get(f"/api/v1/history/{conversation_id}", headers=user.headers).status_code == 200
        assert client.delete(f"/api/v1/history/{conversation_id}", headers=user.headers).status_code == 204
        assert client.get(f"/api/v1/history/{conversation_id}", headers=user.headers).status_code == 404


def test_api_calls_that_ask_for_no_conversation_are_listed_apart_from_chats(
    live: RunningStack, user: User
) -> None:
    script_call = _ask(live, user, f"From a script {uuid.uuid4().hex[:6]}")
    with live.client() as client:
        chat = client.post(
            "/ask",
            json={"prompt": f"From the chat {uuid.uuid4().hex[:6]}", "max_tokens": 8, "origin": "chat"},
            headers=user.headers,
        ).json()
        # A turn added to the chat by any API stays in the chat.
        followed = client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "and then?"}],
                "max_tokens": 8,
                "conversation_id": chat["conversation_id"],
            },
            headers=user.headers,
        )
        assert followed.status_code == 200, followed.text

        def listed(origin: str | None) -> list[tuple[str, str, int]]:
            params = {"origin": origin} if origin else {}
            page = client.get("/api/v1/history", params=params, headers=user.headers).json()
            return [(c["id"], c["origin"], c["message_count"]) for c in page["conversations"]]

        assert listed("chat") == [(chat["conversation_id"], "chat", 2)]
        assert listed("api") == [(script_call["conversation_id"], "api", 1)]
        assert {c[0] for c in listed(None)} == {chat["conversation_id"], script_call["conversation_id"]}
        assert client.get("/api/v1/history?origin=web", headers=user.headers).status_code == 422
