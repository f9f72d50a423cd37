"""vLLM's automatic prefix caching, simulated, so that where a conversation is sent changes its time to
first token as it does on a real replica.

As vLLM's v1 engine does it:
- a prompt is cut into blocks of `block_size` tokens; each full block is named by a hash of its tokens
  chained to the hash of the block before it, so one name stands for the whole prefix up to that block;
- only full blocks are cached: the prompt's last partial block is always computed;
- a lookup walks the prompt's blocks from the first and stops at the first one not cached;
- at most `prompt_tokens - 1` tokens hit: the last prompt token is always computed, for the logits of
  the first output token;
- queries and hits are counted in tokens (`vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total`);
- a chain is touched last block first, so that least-recently-used eviction takes a chain's tail before
  its head (a head without its tail still serves shorter prefixes; a tail without its head serves none).

Simplified: a token is one of the simulator's words, tagged with the role of its chat message (a chat
template makes the same words said by the user and by the assistant different tokens); a prompt's blocks
are cached once its prefill is done, its answer's blocks are not (vLLM caches those too, so on a real
replica a continued conversation hits a little more); eviction is plain LRU over blocks, capped at
`capacity` blocks, without vLLM's rule that blocks in use by running requests stay.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from genai_vllmsim import text

# Joins tokens (and a message's role to its words) where no word can contain it.
_SEPARATOR = "\x1f"


def cache_tokens(prompt: Any, chat: bool) -> list[str]:
    """The tokens that the cache hashes: the words that usage counts, each tagged with its message's role."""
    if not chat:
        return text.words(prompt)
    return [f"{message.get('role')}{_SEPARATOR}{word}" for message in prompt for word in text.words(message)]


class PrefixCache:
    """Full blocks of prompts served, by chained hash, least recently used first out."""

    def __init__(self, block_size: int, capacity: int) -> None:
        self.block_size = block_size
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def block_hashes(self, tokens: Sequence[str]) -> list[bytes]:
        """The chained hash of each full block of `tokens`, first block first."""
        size = self.block_size
        hashes: list[bytes] = []
        parent = b""
        for start in range(0, len(tokens) - size + 1, size):
            block = _SEPARATOR.join(tokens[start : start + size]).encode("utf-8")
            parent = hashlib.blake2b(parent + block, digest_size=16).digest()
            hashes.append(parent)
        return hashes

    def lookup(self, hashes: Sequence[bytes], prompt_tokens: int) -> int:
        """Tokens of the longest cached prefix (whole blocks, fewer than `prompt_tokens`); touches them."""
        limit = min(len(hashes), (prompt_tokens - 1) // self.block_size)
        hit = 0
        while hit < limit and hashes[hit] in self._blocks:
            hit += 1
        for block in reversed(hashes[:hit]):
            self._blocks.move_to_end(block)
        return hit * self.block_size

    def insert(self, hashes: Sequence[bytes]) -> None:
        """Remember a computed prompt's blocks, evicting the least recently used beyond the capacity."""
        blocks = self._blocks
        for block in reversed(hashes):
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()
