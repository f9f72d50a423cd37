"""Settings of the history service, read from GENAI_HISTORY_* environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from genai_common.settings import InternalServiceSettings


class HistorySettings(InternalServiceSettings):
    """Where the service listens, its database, and the caps it enforces on every call."""

    model_config = SettingsConfigDict(env_prefix="GENAI_HISTORY_", extra="ignore")

    listen: str = "127.0.0.1:50052"
    # A secret because the DSN usually carries the database password.
    database_url: SecretStr
    max_page_size: int = Field(100, ge=1)
    default_page_size: int = Field(20, ge=1)
    # Most messages GetConversation returns (the newest ones).
    max_messages: int = Field(500, ge=1)
    # Longest prompt or response stored, in characters.
    max_text_chars: int = Field(200_000, ge=1)
    migrate_on_start: bool = True
    pool_max_size: int = Field(10, ge=1)
    # Rows per page of the usage report (a page per day and owner adds up fast).
    max_usage_page_size: int = Field(1000, ge=1)
    # Largest export: messages, and UTF-8 bytes of prompts and responses together. Larger ones are refused
    # with a message saying so; a conversation at a time still works.
    export_max_messages: int = Field(10_000, ge=1)
    export_max_bytes: int = Field(32 * 1024 * 1024, ge=1)
    # Conversations not updated for this many days are deleted (with their messages); 0 keeps them forever.
    retention_days: int = Field(0, ge=0)
    # Audit events older than this many days are deleted; 0 keeps them forever.
    audit_retention_days: int = Field(0, ge=0)
    # How often the service runs the retention cleanup while either period is set.
    retention_interval_s: float = Field(3600.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _postgres_dsn(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if not raw.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// DSN")
        return value

    @model_validator(mode="after")
    def _default_within_max(self) -> HistorySettings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        return self
