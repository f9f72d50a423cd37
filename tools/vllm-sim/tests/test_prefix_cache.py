"""The simulated prefix cache: vLLM's block rules, and a shorter time to first token where a prompt's
prefix was served before (on that process only)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from genai_vllmsim.launcher import SimulatorProcess, running_simulator
from genai_vllmsim.prefix_cache import PrefixCache, cache_tokens


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_only_whole_blocks_are_cached_and_the_last_token_is_always_computed() -> None:
    cache = PrefixCache(block_size=4, capacity=100)
    tokens = [f"t{i}" for i in range(10)]
    hashes = cache.block_hashes(tokens)
    assert len(hashes) == 2  # the last 2 tokens fill no block
    assert cache.lookup(hashes, 10) == 0
    cache.insert(hashes)
    assert len(cache) == 2
    assert cache.lookup(hashes, 10) == 8
    # Exactly two blocks long: the last token must be computed, so only the first block can hit.
    assert cache.lookup(hashes, 8) == 4
    # A prompt that continues the cached one hits its blocks, then stops at the first new one.
    longer = cache.block_hashes([*tokens[:8], "new", "x", "y", "z", "more"])
    assert longer[:2] == hashes
    assert cache.lookup(longer, 13) == 8


def test_a_block_hash_covers_everything_before_it() -> None:
    cache = PrefixCache(block_size=2, capacity=100)
    cache.insert(cache.block_hashes(["a", "b", "c", "d"]))
    # The same second block after another first block is another block.
    assert cache.lookup(cache.block_hashes(["x", "y", "c", "d", "e"]), 5) == 0
    assert cache.lookup(cache.block_hashes(["a", "b", "c", "d", "e"]), 5) == 4


def test_roles_are_part_of_the_tokens() -> None:
    said_by_user = cache_tokens([{"role": "user", "content": "a b c d"}], chat=True)
    said_by_assistant = cache_tokens([{"role": "assistant", "content": "a b c d"}], chat=True)
    assert len(said_by_user) == len(said_by_assistant) == 4
    assert said_by_user != said_by_assistant
    assert cache_tokens("a b c", chat=False) == ["a", "b", "c"]


def test_the_least_recently_used_blocks_go_first_tails_before_heads() -> None:
    cache = PrefixCache(block_size=1, capacity=4)
    first = cache.block_hashes(["a", "b", "c"])
    second = cache.block_hashes(["x", "y", "z"])
    cache.insert(first)
    cache.insert(second)
    assert len(cache) == 4
    # Of the older chain only its head is left, and it still serves the shorter prefix.
    assert cache.lookup(first, 4) == 1
    assert cache.lookup(second, 4) == 3


# --- over HTTP -------------------------------------------------------------------------------------------

# The modelled prefill (1 ms a token) is many times the scheduling noise of a loaded machine.
PREFILL_FLAGS = ("--prefill-ms-per-1k-tokens", "1000", "--output-tokens", "4")
SYSTEM = {"role": "system", "content": "be brief"}
# 2 + 298 = 300 tokens: 18 whole blocks of 16.
TURN_1 = [SYSTEM, {"role": "user", "content": words("q", 298)}]


def first_token_after(sim: SimulatorProcess, messages: list[dict[str, Any]]) -> tuple[float, str]:
    """Seconds from sending to the first content chunk, and the whole answer."""
    answer: list[str] = []
    first = 0.0
    with httpx.Client(timeout=30) as client:
        sent = time.perf_counter()
        request = {"messages": messages, "stream": True}
        with client.stream("POST", sim.url + "/chat/completions", json=request) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[len("data: ") :])["choices"][0]["delta"]
                if "role" not in delta:
                    first = first or time.perf_counter() - sent
                    answer.append(delta["content"])
    assert first > 0
    return first, "".join(answer)


def hits_and_queries(sim: SimulatorProcess) -> tuple[float, float]:
    """vllm:prefix_cache_hits_total and vllm:prefix_cache_queries_total, in tokens."""
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(httpx.get(sim.base_url + "/metrics").text)
        for sample in family.samples
    }
    return values["vllm:prefix_cache_hits_total"], values["vllm:prefix_cache_queries_total"]


def test_a_continued_conversation_reaches_its_first_token_sooner_where_it_was_served(
    simulators: Callable[..., SimulatorProcess],
) -> None:
    seen = simulators(*PREFILL_FLAGS)
    _, reply = first_token_after(seen, TURN_1)
    turn_2 = [*TURN_1, {"role": "assistant", "content": reply}, {"role": "user", "content": words("f", 16)}]
    # As long as turn 2 (320 tokens), sharing nothing with what the process served.
    fresh = [{"role": "system", "content": "be long"}, {"role": "user", "content": words("n", 318)}]

    continued_here, _ = first_token_after(seen, turn_2)
    fresh_here, _ = first_token_after(seen, fresh)
    # Another replica, which never saw the conversation.
    with running_simulator(*PREFILL_FLAGS) as other:
        continued_elsewhere, _ = first_token_after(other, turn_2)
        assert hits_and_queries(other) == (0, 320)

    # Modelled: 32 tokens to prefill here (its 18 blocks hit), 320 elsewhere or when fresh.
    assert continued_here < fresh_here
    assert continued_here < continued_elsewhere
    assert hits_and_queries(seen) == (18 * 16, 300 + 320 + 320)


def test_resetting_the_prefix_cache_forgets_the_blocks(sim: SimulatorProcess) -> None:
    request = {"messages": [{"role": "user", "content": words("r", 40)}], "max_tokens": 1}
    for _ in range(2):
        httpx.post(sim.url + "/chat/completions", json=request)
    assert hits_and_queries(sim) == (32, 80)
    assert httpx.post(sim.base_url + "/reset_prefix_cache").status_code == 200
    httpx.post(sim.url + "/chat/completions", json=request)
    assert hits_and_queries(sim) == (32, 120)
    # /sim/reset zeroes the counters and forgets the blocks too.
    sim.reset()
    httpx.post(sim.url + "/chat/completions", json=request)
    assert hits_and_queries(sim) == (0, 40)


def test_block_size_flag_and_prefix_caching_off(simulators: Callable[..., SimulatorProcess]) -> None:
    request = {"messages": [{"role": "user", "content": words("b", 40)}], "max_tokens": 1}
    small_blocks = simulators("--block-size", "8")
    for _ in range(2):
        httpx.post(small_blocks.url + "/chat/completions", json=request)
    assert hits_and_queries(small_blocks) == (32, 80)
    # (40 - 1) // 8 = 4 blocks at most: the last token is computed even when the whole prompt is cached.

    off = simulators("--no-prefix-caching")
    for _ in range(2):
        assert httpx.post(off.url + "/chat/completions", json=request).status_code == 200
    assert hits_and_queries(off) == (0, 0)
