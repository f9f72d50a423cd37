"""Gateway settings (env prefix GENAI_GATEWAY_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from genai_common.settings import InternalServiceSettings
from genai_gateway.quota import LimitSet

DEFAULT_PDF_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


class GatewaySettings(InternalServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENAI_GATEWAY_", env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Addresses allowed to set X-Forwarded-For (nginx); the client address feeds login throttling.
    forwarded_allow_ips: str = "127.0.0.1"

    auth_target: str = "127.0.0.1:50051"
    history_target: str = "127.0.0.1:50052"
    adapter_target: str = "127.0.0.1:50053"
    # State: rate limits and quotas, the history spool, the similar layer's run-time settings. Must not
    # evict (production: maxmemory-policy noeviction).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Cached answers and the similar-request index, which may be evicted (production: a Redis of their own
    # with allkeys-lru, so that a full cache never takes the state's memory). Empty: the state Redis.
    cache_redis_url: str = ""
    # Each command's deadline, on both.
    redis_timeout_s: float = 0.5

    # Model asked for when a request names none; empty: the first one the adapter lists.
    model: str = ""
    # How long the list of served models (for checking a requested model) is trusted.
    models_refresh_s: float = 30.0

    # The public gRPC API (genai.assistant.v1.Assistant); 0 turns it off.
    grpc_port: int = 50050
    # What the service tells anyone about itself before they sign in: the API's reference (/docs,
    # /openapi.json) and gRPC server reflection. Off unless asked for (`make run` and the tests turn both
    # on); clients of a production site use the published document and the .proto files.
    public_api_docs: bool = False
    grpc_reflection: bool = False

    # The Telegram bot's username (services/telegram-bot), for the t.me link the web page shows beside a
    # link code; empty: the page shows the command to send the bot.
    telegram_bot_username: str = Field("", pattern=r"^[A-Za-z0-9_]{0,64}$")

    # Earlier turns of a conversation sent as context, newest first, while they fit the model's context
    # window with the request and max_tokens, counted by the model server's own tokenizer; never more than
    # this many characters.
    context_budget_chars: int = Field(8000, ge=0)
    # The model's context window in tokens when its server does not say (vLLM does; llama.cpp's does not:
    # set its --n_ctx here).
    model_context_tokens: int = Field(2048, ge=1)
    # Tokens kept free for what the chat template adds (a default system prompt, the answer's header).
    context_reserve_tokens: int = Field(64, ge=0)
    # Streams: a comment line this often while no token arrives (keeps proxies and clients patient).
    stream_keepalive_s: float = Field(10.0, gt=0)

    # How long an Authenticate answer is used again (0: ask auth on every request). Changes to credentials
    # are heard at once from auth's change feed; this bounds the rest.
    auth_cache_ttl_s: float = Field(10.0, ge=0, le=300)
    auth_cache_max_entries: int = Field(10_000, ge=1)

    # Deadlines of internal calls.
    auth_timeout_s: float = 3.0
    history_timeout_s: float = 3.0
    generate_timeout_s: float = 120.0

    # Input caps: larger requests get a 4xx with a message before any work is done.
    max_prompt_chars: int = Field(16_000, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(2048, ge=1)

    # Limits per role (-1: unlimited); an admin can override them per user. Set as JSON, e.g.
    # GENAI_GATEWAY_LIMITS_USER='{"requests_per_minute": 30, "concurrent_requests": 4}', or one by one,
    # e.g. GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE=30. The seeds' 30 requests a minute is the default.
    limits_user: LimitSet = LimitSet()
    limits_admin: LimitSet = LimitSet(requests_per_minute=120, concurrent_requests=16)
    # With Redis down: "open" keeps answering under per-process limits, "closed" refuses with 503.
    redis_failure_policy: Literal["open", "closed"] = "open"
    # After a Redis failure, how long to answer without trying Redis again.
    redis_cooldown_s: float = Field(2.0, gt=0)

    # Identical requests arriving at different gateway processes share one generation, coordinated through
    # the state Redis (flights.py); off: within each process only.
    shared_flights: bool = True
    # How long a generating gateway's claim lasts unless renewed: the followers of a gateway that died take
    # over after about this long.
    flight_lease_s: float = Field(3.0, ge=0.5, le=60)

    cache_enabled: bool = True
    cache_ttl_s: int = Field(3600, ge=1)
    # "global": identical requests of different users share answers; "user": each user has their own.
    cache_scope: Literal["global", "user"] = "global"
    # Match requests that differ only in letter case (whitespace differences always match).
    cache_case_insensitive: bool = False
    # Answers longer than this are not cached.
    cache_max_entry_chars: int = Field(100_000, ge=1)
    # The similar-request layer (similar.py): a lone question answered from the cached answer of the same
    # question in other words, when every decisive detail agrees. Off here, the model is never loaded; on,
    # the admin can still turn it off at run time (PATCH /api/v1/admin/cache/similar).
    similar_enabled: bool = True
    # Cosine similarity of two questions' embeddings from which one's answer may serve the other (the admin
    # can change it at run time), and of two words that differ between them. Chosen on the labelled set
    # (tests/data/similar_pairs.jsonl, docs/operations.md): 1 wrong hit in 213 near-misses, 52 % of
    # paraphrases answered.
    similar_threshold: float = Field(0.95, ge=0.5, le=1.0)
    similar_word_threshold: float = Field(0.88, ge=0.5, le=1.0)
    # CPU threads of one embedding (one request's at a time).
    similar_threads: int = Field(1, ge=1, le=16)

    # The public TLS certificate nginx serves (PEM), mounted read-only here: its expiry date becomes the
    # metric genai_tls_certificate_expiry_timestamp_seconds{certificate="public"}. Empty: not reported.
    tls_cert_file: str = ""

    # Exchanges that history could not take are kept in Redis and replayed by this loop.
    spool_drain_interval_s: float = 2.0
    # Answers kept in Redis while history is down; at this many, new questions get 503 until it drains.
    spool_max_exchanges: int = Field(100_000, ge=1)

    # Exports (JSON, CSV, PDF). The history service caps what an export may hold; these bound the rest.
    export_timeout_s: float = Field(60.0, gt=0)
    # A TrueType font with Cyrillic, embedded in PDF exports (Debian/Ubuntu: fonts-dejavu-core; Red OS,
    # RHEL, Fedora: dejavu-sans-fonts, found at its own path when this is left at the default).
    pdf_font: str = DEFAULT_PDF_FONT
    # PDF layout is slow work for a web request: larger exports are refused with a pointer to CSV or JSON.
    export_pdf_max_chars: int = Field(1_000_000, ge=1)
    # Exports and searches cost the history service and PostgreSQL far more than a chat turn: each user may
    # start this many a minute (exports: this many at once too); beyond that, 429 with Retry-After.
    exports_per_minute: int = Field(10, ge=1)
    exports_at_once: int = Field(2, ge=1)
    searches_per_minute: int = Field(60, ge=1)
