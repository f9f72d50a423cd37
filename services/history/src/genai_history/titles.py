"""Conversation titles derived from the first prompt."""

from __future__ import annotations

MAX_TITLE_CHARS = 80
ELLIPSIS = "\u2026"


def title_from_prompt(prompt: str) -> str:
    """The first non-blank line of the prompt, whitespace collapsed, at most 80 characters.

    A longer line is cut and ends with an ellipsis (counted in the 80). An all-blank prompt gives "".
    """
    for line in prompt.splitlines():
        collapsed = " ".join(line.split())
        if collapsed:
            if len(collapsed) <= MAX_TITLE_CHARS:
                return collapsed
            return collapsed[: MAX_TITLE_CHARS - 1].rstrip() + ELLIPSIS
    return ""


MAX_CUSTOM_TITLE_CHARS = 200


def clean_title(title: str) -> str:
    """A title given by the user with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(title.split())
