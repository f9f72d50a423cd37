"""Dialog search in word forms through nginx: Russian and English stemming, ё as е, most relevant first."""

from __future__ import annotations

import uuid

from tests.harness import RunningStack, User


def test_search_finds_word_forms(live: RunningStack, user: User) -> None:
    tag = f"zq{uuid.uuid4().hex[:8]}"
    prompts = {
        "winter": f"Какая зима будет в этом году? {tag}",
        "hedgehog": f"Нарисуй ёжик в тумане {tag}",
        "tests": f"Why are my tests failing after the update? {tag}",
    }
    with live.client() as client:
        ids = {}
        for name, prompt in prompts.items():
            answer = client.post("/ask", json={"prompt": prompt, "max_tokens": 4}, headers=user.headers)
            assert answer.status_code == 200, answer.text
            ids[name] = answer.json()["conversation_id"]

        def found(query: str) -> list[dict[str, str]]:
            response = client.get(
                "/api/v1/history/search", params={"q": f"{query} {tag}"}, headers=user.headers
            )
            assert response.status_code == 200, response.text
            return list(response.json()["hits"])

        [winter] = found("зиму")
        assert winter["conversation_id"] == ids["winter"]
        assert "«зима»" in winter["snippet"]
        [hedgehog] = found("ежик")
        assert hedgehog["conversation_id"] == ids["hedgehog"]
        assert "«ёжик»" in hedgehog["snippet"]
        [failing] = found("test failed")
        assert failing["conversation_id"] == ids["tests"]
        assert found("лето") == []
