"""Settings of the inference adapter, read from GENAI_ADAPTER_* environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from genai_common.settings import InternalServiceSettings


class AdapterSettings(InternalServiceSettings):
    """Where the adapter listens, which model server it talks to, and the limits on each upstream call."""

    model_config = SettingsConfigDict(env_prefix="GENAI_ADAPTER_", extra="ignore")

    listen: str = "127.0.0.1:50053"
    # Base URL of the OpenAI-compatible API, including /v1.
    upstream_url: str = "http://127.0.0.1:8081/v1"
    upstream_api_key: SecretStr | None = None
    # Model used when a request names none; empty: the first model the upstream lists.
    model: str = ""
    connect_timeout_s: float = Field(3.0, gt=0)
    # Longest silence between two received bytes (vLLM sends nothing until the first token).
    read_timeout_s: float = Field(60.0, gt=0)
    # Longest whole upstream call; the caller's gRPC deadline shortens it further.
    total_timeout_s: float = Field(300.0, gt=0)
    max_connections: int = Field(256, ge=1)
    # Extra attempts when the connection cannot be made (nothing was sent, so nothing can be doubled).
    retries: int = Field(1, ge=0, le=5)
    # Generations allowed upstream at once; set it to vLLM's --max-num-seqs, so that requests wait
    # here, where users take turns, rather than first come first served inside vLLM.
    max_concurrent: int = Field(16, ge=1)
    # Requests allowed to wait for a slot; beyond it RESOURCE_EXHAUSTED with a retry-after.
    queue_max: int = Field(1000, ge=0)
    # Longest wait for a slot (the caller's deadline, if sooner, ends it first).
    queue_timeout_s: float = Field(60.0, gt=0)

    @field_validator("upstream_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream_url must be an http:// or https:// URL")
        return value

    @field_validator("upstream_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value
