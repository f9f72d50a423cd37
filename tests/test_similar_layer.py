"""The similar-request layer through the real stack: nginx, the gateway, Redis, llama.cpp with SmolLM2.

A question asked a moment ago by one user is answered for another user's paraphrase from the layer, with
how similar the two were; the same question with another number, another target language, a negation, or
inside a conversation goes to the model; an entry made through one gateway is found through another; the
admin turns the layer off and on, changes the threshold and purges it; its hits are counted in /metrics.
Every question carries a tag of its own (an identifier, which both questions of a pair share), so that no
other test's question can meet it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.harness import RunningStack, User

SIMILAR = "/api/v1/admin/cache/similar"


@pytest.fixture(scope="module")
def admin(live: RunningStack) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {live.login(live.admin_username, live.admin_password)}"}
    # The model loads in the background after the gateway starts.
    deadline = time.monotonic() + 60
    with live.client() as client:
        while not client.get(SIMILAR, headers=headers).json()["model_ready"]:
            assert time.monotonic() < deadline, "the embedding model did not load"
            time.sleep(0.2)
    return headers


def tag() -> str:
    # Ends in a letter: a number's unit is the word after it ("5 MB"), which a paraphrase may change.
    return f"PC-{uuid.uuid4().hex[:6]}x"


def ask(client: httpx.Client, user: User, prompt: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/ask", json={"prompt": prompt, "max_tokens": 16, **fields}, headers=user.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def similar_hits(live: RunningStack, name: str = "gateway") -> float:
    return live.metrics(name).get(
        ("genai_gateway_cache_lookups_total", (("layer", "similar"), ("result", "hit"))), 0.0
    )


def test_a_paraphrase_of_another_users_question_comes_from_the_similar_layer(
    live: RunningStack, admin: dict[str, str]
) -> None:
    alice, bob = live.new_user(), live.new_user()
    pc = tag()
    hits = similar_hits(live)
    with live.client() as client:
        first = ask(client, alice, f"Как очистить кэш в браузере Chrome на компьютере {pc}?")
        again = ask(client, bob, f"Как в Chrome почистить кэш браузера на компьютере {pc}?")
    assert (first["source"], first["similarity"]) == ("model", None)
    assert again["source"] == "cache"
    assert again["response"] == first["response"]
    assert 0.95 <= again["similarity"] <= 1
    assert again["usage"] == first["usage"]
    assert similar_hits(live) == hits + 1


@pytest.mark.parametrize(
    ("asked", "then"),
    [
        ("Сколько будет 17 умножить на 23 для отчёта {pc}?", "Чему равно 17 умножить на 24 для отчёта {pc}?"),
        (
            'Translate "good morning" into German for ticket {pc}',
            'Translate "good morning" into French for ticket {pc}',
        ),
        ("Why does laptop {pc} shut down by itself?", "Why doesn't laptop {pc} shut down?"),
    ],
    ids=["number", "target-language", "negation"],
)
def test_another_number_language_or_negation_goes_to_the_model(
    live: RunningStack, admin: dict[str, str], asked: str, then: str
) -> None:
    pc = tag()
    with live.client() as client:
        assert ask(client, live.new_user(), asked.format(pc=pc))["source"] == "model"
        assert ask(client, live.new_user(), then.format(pc=pc))["source"] == "model"


def test_inside_a_conversation_it_goes_to_the_model(live: RunningStack, admin: dict[str, str]) -> None:
    alice, bob = live.new_user(), live.new_user()
    pc = tag()
    with live.client() as client:
        ask(client, alice, f"How do I clear the cache in Chrome on computer {pc}?")
        started = ask(client, bob, f"Hello from computer {pc}", origin="chat")
        inside = ask(
            client,
            bob,
            f"How can I clear Chrome's browser cache on computer {pc}?",
            conversation_id=started["conversation_id"],
        )
        alone = ask(client, bob, f"How can I clear Chrome's browser cache on computer {pc}?")
    assert inside["source"] == "model"
    assert alone["source"] == "cache" and alone["similarity"] is not None


def test_regenerate_asks_the_model(live: RunningStack, admin: dict[str, str]) -> None:
    pc = tag()
    with live.client() as client:
        ask(client, live.new_user(), f"How do I merge cells in Excel on computer {pc}?")
        user = live.new_user()
        response = client.post(
            "/ask",
            json={"prompt": f"How can I merge cells in Excel on computer {pc}?", "max_tokens": 16},
            headers={**user.headers, "Cache-Control": "no-cache"},
        )
    assert response.json()["source"] == "model"


def test_an_entry_made_through_one_gateway_is_found_through_another(
    live: RunningStack, admin: dict[str, str]
) -> None:
    other = live.start_extra_gateway("gateway-similar")
    try:
        with httpx.Client(base_url=other, timeout=60) as direct:
            deadline = time.monotonic() + 60
            while not direct.get(SIMILAR, headers=admin).json()["model_ready"]:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            pc = tag()
            with live.client() as client:
                first = ask(client, live.new_user(), f"Как подключить второй монитор к ноутбуку {pc}?")
            again = ask(direct, live.new_user(), f"Как к ноутбуку {pc} подключить второй монитор?")
        assert first["source"] == "model"
        assert again["source"] == "cache" and again["response"] == first["response"]
        assert again["similarity"] >= 0.95
        assert similar_hits(live, "gateway-similar") == 1
    finally:
        live.stop("gateway-similar")


def test_the_admin_turns_it_off_changes_the_threshold_and_purges(
    live: RunningStack, admin: dict[str, str]
) -> None:
    pc = tag()
    question = f"How do I clear the cache in Chrome on computer {pc}?"
    paraphrases = iter(
        f"How can I clear Chrome's browser cache on computer {pc}{end}"
        for end in ("?", "? Thanks", "? Please")
    )
    with live.client() as client:
        assert client.get(SIMILAR, headers=live.new_user().headers).status_code == 403
        ask(client, live.new_user(), question)
        try:
            off = client.patch(SIMILAR, json={"enabled": False}, headers=admin)
            assert off.status_code == 200 and off.json()["enabled"] is False
            assert ask(client, live.new_user(), next(paraphrases))["source"] == "model"
            strict = client.patch(SIMILAR, json={"enabled": True, "threshold": 0.9999}, headers=admin)
            assert strict.json()["threshold"] == 0.9999
            assert ask(client, live.new_user(), next(paraphrases))["source"] == "model"
        finally:
            client.patch(SIMILAR, json={"enabled": True, "threshold": 0.95}, headers=admin)
        purged = client.delete(SIMILAR, headers=admin)
        assert purged.status_code == 200 and purged.json()["deleted"] > 0
        # The exact cache stays; the layer knows only answers given from now on.
        assert ask(client, live.new_user(), question)["source"] == "cache"
        assert ask(client, live.new_user(), next(paraphrases))["source"] == "model"
        bad = client.patch(SIMILAR, json={"threshold": 2}, headers=admin)
        assert bad.status_code == 422
