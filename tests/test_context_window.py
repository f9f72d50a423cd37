"""A long Russian dialog whose characters fit the context budget but whose tokens do not: the gateway trims
the earlier turns by llama.cpp's own tokenizer, so the model never gets more than its window."""

from __future__ import annotations

import uuid

import httpx

from genai_devstack.stack import LLAMA_CONTEXT_TOKENS
from tests.harness import RunningStack, User

# Russian, which SmolLM2's tokenizer, trained mostly on English, spends about 0.7 tokens a character on: three
# of these (about 600 tokens) make a turn, so two earlier turns fit beside the last and five do not.
PARAGRAPH = (
    "Расскажите подробно, как настроить резервное копирование базы данных PostgreSQL на сервере "
    "под управлением РЕД ОС, чтобы копии создавались каждую ночь, хранились две недели, проверялись "
    "на целостность и восстанавливались на отдельной машине без остановки основного сервиса. "
)
TURNS = 5
MAX_TOKENS = 16


def tokens(live: RunningStack, text: str) -> int:
    """The count of llama.cpp's server itself, asked directly."""
    response = httpx.post(
        f"http://127.0.0.1:{live.cfg.ports.upstream}/extras/tokenize/count", json={"input": text}, timeout=30
    )
    response.raise_for_status()
    return int(response.json()["count"])


def test_context_is_trimmed_by_the_models_token_count(live: RunningStack, user: User) -> None:
    prompts = [f"{i}. {PARAGRAPH * 3}{uuid.uuid4().hex[:6]}" for i in range(TURNS)]
    total_chars = sum(len(p) for p in prompts)
    # What makes this a test: every turn fits the character budget (8,000), all of them do not fit the window.
    assert total_chars < 8000
    assert sum(tokens(live, p) for p in prompts) > LLAMA_CONTEXT_TOKENS

    conversation_id = None
    with live.client(timeout=120) as client:
        for prompt in prompts:
            response = client.post(
                "/ask",
                headers=user.headers,
                json={"prompt": prompt, "max_tokens": MAX_TOKENS, "conversation_id": conversation_id},
            )
            assert response.status_code == 200, response.text
            conversation_id = response.json()["conversation_id"]
        usage = response.json()["usage"]
        stored = client.get(f"/api/v1/history/{conversation_id}", headers=user.headers).json()

    assert usage["prompt_tokens"] + MAX_TOKENS <= LLAMA_CONTEXT_TOKENS
    # Earlier turns were sent while they fitted: at least the previous one went to the model with the last.
    assert usage["prompt_tokens"] > tokens(live, prompts[-1]) + tokens(live, prompts[-2])
    assert [m["prompt"] for m in stored["messages"]] == prompts
