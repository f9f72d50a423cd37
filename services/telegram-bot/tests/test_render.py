"""Splitting answers to Telegram's limit and formatting them with entities."""

from __future__ import annotations

import random

from genai_telegram.render import MESSAGE_LIMIT, render, split, utf16_len


def test_a_short_answer_is_one_part() -> None:
    assert split("Hello, world.") == ["Hello, world."]


def test_a_10000_character_answer_is_split_on_paragraphs_never_mid_word() -> None:
    rng = random.Random(7)  # noqa: S311 (test data)
    words = ["алгоритм", "data", "сервер", "token", "😀emoji", "nginx", "очередь", "model"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(40)]
    answer = "\n\n".join(paragraphs)
    assert len(answer) >= 10_000
    parts = split(answer)
    assert len(parts) >= 3
    assert all(utf16_len(render(p).text) <= MESSAGE_LIMIT for p in parts)
    # Whole paragraphs in each part, in order: splits fall between paragraphs.
    assert "\n\n".join(parts) == answer
    assert [w for p in parts for w in p.split()] == answer.split()


def test_one_huge_paragraph_is_split_between_words() -> None:
    answer = " ".join(f"word{i}" for i in range(3000))
    parts = split(answer)
    assert len(parts) >= 5 and all(utf16_len(p) <= MESSAGE_LIMIT for p in parts)
    assert [w for p in parts for w in p.split()] == answer.split()


def test_a_word_longer_than_a_message_is_cut_as_the_last_resort() -> None:
    blob = "x" * 9000
    parts = split(f"before {blob} after")
    assert all(utf16_len(p) <= MESSAGE_LIMIT for p in parts)
    assert "".join(p.replace(" ", "") for p in parts) == f"before{blob}after"


def test_a_code_block_cut_by_a_split_is_closed_and_reopened() -> None:
    code = "\n".join(f"print({i})" for i in range(800))
    parts = split(f"Here:\n\n```python\n{code}\n```\n\nDone.")
    assert len(parts) >= 2
    for part in parts:
        rendered = render(part)
        assert utf16_len(rendered.text) <= MESSAGE_LIMIT
    assert parts[0] == "Here:"
    assert parts[1].startswith("```python\n") and parts[1].endswith("\n```")
    assert parts[2].startswith("```python\n")
    pre = [e for p in parts[1:] for e in render(p).entities if e.type == "pre"]
    assert len(pre) == len(parts) - 1 and all(e.language == "python" for e in pre)
    code_lines = [line for p in parts[1:] for line in render(p).text.splitlines() if line.startswith("print")]
    assert code_lines == code.splitlines()


def test_markdown_becomes_entities_and_stray_marks_stay_text() -> None:
    rendered = render("Use **bold** and `code`; a stray _ and * and snake_case_name stay.\n```sh\nls -l\n```")
    assert rendered.text == "Use bold and code; a stray _ and * and snake_case_name stay.\nls -l"
    kinds = {(e.type, rendered.text[e.offset : e.offset + e.length], e.language) for e in rendered.entities}
    assert kinds == {("bold", "bold", ""), ("code", "code", ""), ("pre", "ls -l", "sh")}


def test_entity_offsets_count_utf16_units() -> None:
    rendered = render("😀 **жирный**")
    (bold,) = rendered.entities
    assert (bold.offset, bold.length) == (3, 6)


def test_an_unclosed_block_while_streaming_runs_to_the_end() -> None:
    rendered = render("Look:\n```py\nx = 1")
    assert rendered.text == "Look:\nx = 1"
    assert [(e.type, e.language) for e in rendered.entities] == [("pre", "py")]


def test_nothing_to_show_is_never_an_empty_message() -> None:
    assert render("```").text == "```"
    assert render("   ").text == "…"
