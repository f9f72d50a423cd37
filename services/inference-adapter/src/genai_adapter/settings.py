"""Settings of the inference adapter, read from GENAI_ADAPTER_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from genai_common.settings import InternalServiceSettings


class AdapterSettings(InternalServiceSettings):
    """Where the adapter listens, which model server it talks to, and the limits on each upstream call."""

    model_config = SettingsConfigDict(env_prefix="GENAI_ADAPTER_", extra="ignore")

    listen: str = "127.0.0.1:50053"
    # Base URL of the OpenAI-compatible API, including /v1.
    upstream_url: str = "http://127.0.0.1:8081/v1"
    # Several model servers (one vLLM per GPU): their base URLs, comma-separated; instead of upstream_url.
    upstream_urls: str = ""
    # A file holding the URLs (one per line or comma-separated, "#" starts a comment), read at start, on
    # SIGHUP and every upstream_refresh_s: replicas are added and removed without a restart. It wins
    # over upstream_urls and upstream_url.
    upstream_urls_file: Path | None = None
    # Each host name in the URLs stands for every address it resolves to, one replica each (a DNS name
    # with a record per replica: compose --scale, a Kubernetes headless service); resolved again every
    # upstream_refresh_s. Off: a name is one replica, whatever it resolves to.
    upstream_resolve: bool = False
    upstream_refresh_s: float = Field(5.0, gt=0)
    # Active health checks: GET /health (and /metrics, for the load) at each replica this often; a replica
    # that fails unhealthy_after checks in a row leaves the rotation, one answer brings it back.
    health_interval_s: float = Field(1.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)
    # Circuit breaker per replica: this many failed requests in a row (refused, reset, timed out, 5xx)
    # keep it out for breaker_cooldown_s, then one trial request decides.
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(2.0, gt=0)
    # Conversation affinity: a replica keeps its conversations while it carries at most this many times
    # the average load (consistent hashing with bounded loads); 1 spreads strictly, higher keeps more.
    affinity_load_factor: float = Field(1.25, ge=1.0)
    # Where a request without a conversation (no affinity key) goes: the least loaded replica, or each
    # replica in turn (round_robin, blind to load: for comparison, or servers of equal speed).
    routing: Literal["least_loaded", "round_robin"] = "least_loaded"
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
    # Generations allowed at once on each replica; set it to vLLM's --max-num-seqs, so that requests wait
    # here, where users take turns, rather than first come first served inside vLLM. The fair queue
    # admits this many times the replicas in rotation.
    max_concurrent: int = Field(16, ge=1)
    # Requests allowed to wait for a slot; beyond it RESOURCE_EXHAUSTED with a retry-after.
    queue_max: int = Field(1000, ge=0)
    # Longest wait for a slot (the caller's deadline, if sooner, ends it first).
    queue_timeout_s: float = Field(60.0, gt=0)
    # Several adapters in front of the same model servers share one fair queue in this Redis (the state
    # Redis, never the evicting cache one): the cap above holds for all of them together and users take
    # turns across them. Empty: this adapter queues alone. While Redis does not answer, each adapter
    # queues alone (up to the whole cap) and tries it again after redis_cooldown_s.
    redis_url: str = ""
    redis_timeout_s: float = Field(0.5, gt=0)
    redis_cooldown_s: float = Field(5.0, gt=0)

    @field_validator("upstream_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)

    @field_validator("upstream_urls")
    @classmethod
    def _http_urls(cls, value: str) -> str:
        return ",".join(parse_urls(value))

    def replica_urls(self) -> list[str]:
        """The configured URLs (the file's are read by the replica set, which reads it again later)."""
        return parse_urls(self.upstream_urls) or [self.upstream_url]

    @field_validator("upstream_urls_file", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("upstream_urls_file")
    @classmethod
    def _readable_list(cls, value: Path | None) -> Path | None:
        # Read once here so that a missing, empty or wrong file stops the start with a clear message; later
        # reads that fail keep the list known before (see ReplicaSet.refresh).
        if value is not None:
            read_url_file(value)
        return value

    @field_validator("upstream_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value


def http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def read_url_file(path: Path) -> list[str]:
    """The URLs a file lists (see `parse_urls`); an unreadable file or one without any is an error."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    urls = parse_urls(text)
    if not urls:
        raise ValueError(f"{path} lists no model server URL")
    return urls


def parse_urls(text: str) -> list[str]:
    """URLs separated by commas or lines, "#" to the end of a line a comment; each once, in order."""
    urls: list[str] = []
    for line in text.splitlines():
        for item in line.split("#", 1)[0].split(","):
            if item.strip():
                url = http_url(item)
                if url not in urls:
                    urls.append(url)
    return urls
