"""A model's Markdown as Telegram messages: split to fit, formatted with entities, never parsed by Telegram.

Telegram's own Markdown parse modes refuse a whole message for one stray `_` or `*`, which model output is
full of. So the text is sent as it is, with no parse mode, and the few marks worth keeping become message
entities here: fenced code blocks (pre, with their language), inline `code` and **bold**. Unmatched marks
stay as they are; nothing the model writes can make a message fail to send.

Telegram counts a message's length (at most 4,096) and entity offsets in UTF-16 code units, so this
module does too. Long answers are split on paragraph boundaries, then lines, then spaces, so no word is
cut; only a "word" longer than a whole message (a huge URL or a base64 blob) is cut, as nothing else fits.
A code block cut by a split is closed at the end of one part and opened again, with its language, in the
next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MESSAGE_LIMIT = 4096
# Room kept in each part for closing and reopening a code block that a split cuts.
_FENCE_RESERVE = 32

_FENCE = re.compile(r"^```([^\n`]*)$", re.MULTILINE)
_INLINE = re.compile(r"`([^`\n]+)`|\*\*(?=\S)(.+?)(?<=\S)\*\*")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True)
class Entity:
    """A Bot API MessageEntity: offset and length in UTF-16 code units."""

    type: str
    offset: int
    length: int
    language: str = ""

    def as_dict(self) -> dict[str, object]:
        entity: dict[str, object] = {"type": self.type, "offset": self.offset, "length": self.length}
        if self.language:
            entity["language"] = self.language
        return entity


@dataclass(frozen=True)
class Rendered:
    text: str
    entities: tuple[Entity, ...]


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.entities: list[Entity] = []

    def add(self, text: str, kind: str = "", language: str = "") -> None:
        size = utf16_len(text)
        if kind and size:
            self.entities.append(Entity(kind, self.length, size, language))
        self.parts.append(text)
        self.length += size

    def inline(self, text: str) -> None:
        position = 0
        for match in _INLINE.finditer(text):
            self.add(text[position : match.start()])
            if match.group(1) is not None:
                self.add(match.group(1), "code")
            else:
                self.add(match.group(2), "bold")
            position = match.end()
        self.add(text[position:])


def render(markdown: str) -> Rendered:
    """Text and entities for one message; an unclosed code block (a streamed answer so far) runs to the end."""
    builder = _Builder()
    position = 0
    while True:
        opening = _FENCE.search(markdown, position)
        if opening is None:
            builder.inline(markdown[position:])
            break
        builder.inline(markdown[position : opening.start()])
        language = opening.group(1).strip()
        body_start = (
            opening.end() + 1 if markdown[opening.end() : opening.end() + 1] == "\n" else opening.end()
        )
        closing = _FENCE.search(markdown, body_start)
        body_end = closing.start() if closing else len(markdown)
        body = markdown[body_start:body_end].removesuffix("\n")
        builder.add(body, "pre", language)
        if closing is None:
            break
        position = closing.end()
    text = "".join(builder.parts)
    if not text.strip():
        # Telegram refuses an empty message; a lone fence (a stream's first chunk) shows as itself.
        return Rendered(markdown.strip() or "…", ())
    return Rendered(text, tuple(builder.entities))


def _pieces(text: str, budget: int) -> list[str]:
    """`text` in pieces of at most `budget` UTF-16 units, cut at the coarsest boundary that works:
    paragraphs, then lines, then spaces; a single word longer than `budget` is cut as a last resort."""
    if utf16_len(text) <= budget:
        return [text]
    for separator in ("\n\n", "\n", " "):
        units = text.split(separator)
        if len(units) > 1:
            break
    else:
        return _cut(text, budget)
    pieces: list[str] = []
    current = ""
    for index, body in enumerate(units):
        # Each unit keeps the separator that followed it, so joining the pieces gives the text back.
        unit = body + separator if index < len(units) - 1 else body
        if utf16_len(current + unit) <= budget:
            current += unit
            continue
        if current:
            pieces.append(current)
        if utf16_len(unit) <= budget:
            current = unit
        else:
            *whole, current = _pieces(body, budget)
            pieces.extend(whole)
            current += unit[len(body) :]
    if current:
        pieces.append(current)
    return pieces


def _cut(word: str, budget: int) -> list[str]:
    pieces, current = [], ""
    for char in word:
        if utf16_len(current + char) > budget:
            pieces.append(current)
            current = ""
        current += char
    return [*pieces, current] if current else pieces


def split(markdown: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The answer as parts that each render to at most `limit` UTF-16 units; joined, they are the answer
    (with the fences a split adds). Trailing whitespace of a part is dropped: Telegram trims it anyway."""
    pieces = [piece for piece in _pieces(markdown, limit - _FENCE_RESERVE) if piece.strip()]
    parts: list[str] = []
    open_language: str | None = None
    for piece in pieces:
        text = piece.rstrip()
        reopened = open_language
        for fence in _FENCE.finditer(text):
            open_language = fence.group(1).strip() if open_language is None else None
        if reopened is not None:
            text = f"```{reopened}\n{text}"
        if open_language is not None:
            text += "\n```"
        parts.append(text)
    return parts or [markdown.strip() or "…"]
