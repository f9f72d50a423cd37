"""Gateway settings (env prefix GENAI_GATEWAY_)."""

from __future__ import annotations

from genai_common.settings import CommonSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="GENAI_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # Addresses allowed to set X-Forwarded-For (nginx); the client address feeds login throttling.
    forwarded_allow_ips: str = "127.0.0.1"

    auth_target: str = "127.0.0.1:50051"
    history_target: str = "127.0.0.1:50052"
    adapter_target: str = "127.0.0.1:50053"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.5

    # Model asked for when a request names none; empty: the first one the adapter lists.
    model: str = ""
    # How long the list of served models (for checking a requested model) is trusted.
    models_refresh_s: float = 30.0

    # The public gRPC API (genai.assistant.v1.Assistant); 0 turns it off.
    grpc_port: int = 50050

    # Earlier turns of a conversation sent as context, newest first, up to this many characters.
    context_budget_chars: int = Field(8000, ge=0)
    # Streams: a comment line this often while no token arrives (keeps proxies and clients patient).
    stream_keepalive_s: float = Field(10.0, gt=0)

    # Deadlines of internal calls.
    auth_timeout_s: float = 3.0
    history_timeout_s: float = 3.0
    generate_timeout_s: float = 120.0

    # Input caps: larger requests get a 4xx with a message before any work is done.
    max_prompt_chars: int = Field(16_000, ge=1)
    default_max_tokens: int = Field(256, ge=1)
    max_tokens_limit: int = Field(2048, ge=1)

    # Requests per user per minute (the seeds' 30/minute).
    rate_limit_per_minute: int = Field(30, ge=1)
    rate_limit_window_s: int = Field(60, ge=1)

    cache_enabled: bool = True
    cache_ttl_s: int = Field(3600, ge=1)

    # Exchanges that history could not take are kept in Redis and replayed by this loop.
    spool_drain_interval_s: float = 2.0
