"""Deterministic output: the same prompt always gets the same words, one word per token."""

from __future__ import annotations

import json
import zlib
from typing import Any

VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly juggle bright orange "
    "lanterns near an old stone bridge under silver clouds and every river sings about distant "
    "mountains forests cities machines engines tokens models answers questions gently today"
).split()

# Tokens are sent as JSON string literals; encoding them once keeps the per-chunk cost to a concat.
FIRST_WORDS = [w.capitalize() for w in VOCABULARY]
FIRST_JSON = [json.dumps(w) for w in FIRST_WORDS]
NEXT_WORDS = [" " + w for w in VOCABULARY]
NEXT_JSON = [json.dumps(w) for w in NEXT_WORDS]


def prompt_seed(prompt: Any) -> int:
    """A stable hash of the prompt (Python's hash() changes per process)."""
    raw = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return zlib.crc32(raw.encode("utf-8"))


def plan(seed: int, count: int, stop: frozenset[str]) -> tuple[list[int], bool]:
    """Word indices of the output, and whether a stop word cut it short.

    Index i < len(VOCABULARY) picks from FIRST_*; the caller uses NEXT_* after the first token.
    """
    size = len(VOCABULARY)
    start = seed % size
    # An odd stride that is coprime with the vocabulary size walks through every word.
    stride = 1 + 2 * ((seed >> 8) % 7)
    while size % stride == 0 and stride > 1:
        stride += 2
    indices = [(start + i * stride) % size for i in range(count)]
    if stop:
        for pos, idx in enumerate(indices):
            if VOCABULARY[idx] in stop or (pos == 0 and FIRST_WORDS[idx] in stop):
                return indices[:pos], True
    return indices, False


def join(indices: list[int]) -> str:
    if not indices:
        return ""
    return FIRST_WORDS[indices[0]] + "".join(NEXT_WORDS[i] for i in indices[1:])


# Token ids of the simulated tokenizer: a stable hash of the word, within a vocabulary of this size.
TOKEN_ID_SPACE = 32_000


def words(value: Any) -> list[str]:
    """The tokens of a prompt (or messages), one per word: the ones `count_words` counts."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [w for v in value for w in words(v)]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, dict):
        return words(value.get("content")) + words(value.get("text"))
    return []


def token_id(word: str) -> int:
    return zlib.crc32(word.encode("utf-8")) % TOKEN_ID_SPACE


def count_words(value: Any) -> int:
    """Prompt tokens, approximated as whitespace-separated words of every text part."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1  # a token id in a pre-tokenised completions prompt
    if isinstance(value, dict):
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0
