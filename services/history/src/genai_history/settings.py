"""Settings of the history service, read from GENAI_HISTORY_* environment variables."""

from __future__ import annotations

from genai_common.settings import CommonSettings
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict


class HistorySettings(CommonSettings):
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
