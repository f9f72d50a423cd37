"""The web page shows an answer for a similar question discreetly: the cache badge names it, with the
similarity (Debian's Chromium through nginx, the stack on llama.cpp with SmolLM2)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.harness import RunningStack
from tests.test_browser import (  # noqa: F401 (the playwright fixture)
    DESKTOP,
    ask,
    expect,
    last_answer,
    launch_for,
    log_in,
    playwright,
    shot,
    wait_answered,
)

__all__ = ["playwright"]


def test_a_similar_questions_answer_is_marked_with_its_similarity(
    live: RunningStack, playwright: Any
) -> None:  # noqa: F811
    pc = f"PC-{uuid.uuid4().hex[:6]}x"
    first = live.new_user()
    with live.client() as client:
        asked = client.post(
            "/ask",
            json={"prompt": f"Как очистить кэш в браузере Chrome на компьютере {pc}?", "max_tokens": 16},
            headers=first.headers,
        )
    assert asked.json()["source"] == "model"
    user = live.new_user()
    launched = launch_for(playwright, live)
    try:
        context = launched.new_context(base_url=live.base_url, locale="ru-RU", viewport=DESKTOP)
        page = context.new_page()
        log_in(page, user.username, user.password)
        ask(page, f"Как в Chrome почистить кэш браузера на компьютере {pc}?")
        assert wait_answered(page).strip()
        badge = last_answer(page).locator(".badge.cache")
        expect(badge).to_be_visible()
        expect(badge).to_have_text(re.compile(r"^похожий вопрос · (9[5-9]|100)%$"))
        assert "«Сгенерировать заново» спросит модель" in (badge.get_attribute("title") or "")
        shot(page, "similar-question-badge")
    finally:
        launched.close()
