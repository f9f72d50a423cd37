"""Settings of the auth service and of its admin CLI, read from GENAI_AUTH_* variables."""

from __future__ import annotations

import argon2
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from genai_common.settings import CommonSettings, check_secret

# OWASP's lowest recommended argon2id cost (19 MiB, 2 passes). Cheaper settings exist so that tests run
# fast; outside dev mode they are refused, so a test value pasted into production cannot weaken hashes.
MIN_ARGON2_MEMORY_COST_KIB = 19_456
MIN_ARGON2_TIME_COST = 2


class UserStoreSettings(CommonSettings):
    """What both the service and the admin CLI need: the database and the cost of password hashing."""

    model_config = SettingsConfigDict(env_prefix="GENAI_AUTH_", extra="ignore")

    # repr=False: the URL may carry the database password.
    database_url: str = Field(repr=False)
    argon2_time_cost: int = Field(argon2.DEFAULT_TIME_COST, ge=1)
    argon2_memory_cost: int = Field(argon2.DEFAULT_MEMORY_COST, ge=8, description="KiB")
    argon2_parallelism: int = Field(argon2.DEFAULT_PARALLELISM, ge=1)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _argon2_strong_enough(self) -> UserStoreSettings:
        if self.argon2_memory_cost < 8 * self.argon2_parallelism:
            raise ValueError("GENAI_AUTH_ARGON2_MEMORY_COST must be at least 8 KiB per lane of parallelism")
        if self.env != "dev" and (
            self.argon2_memory_cost < MIN_ARGON2_MEMORY_COST_KIB
            or self.argon2_time_cost < MIN_ARGON2_TIME_COST
        ):
            raise ValueError(
                "argon2 cost below the recommended minimum "
                f"(GENAI_AUTH_ARGON2_MEMORY_COST >= {MIN_ARGON2_MEMORY_COST_KIB}, "
                f"GENAI_AUTH_ARGON2_TIME_COST >= {MIN_ARGON2_TIME_COST}) is only allowed with GENAI_ENV=dev"
            )
        return self


class AuthSettings(UserStoreSettings):
    """Settings of the auth gRPC service."""

    listen: str = "127.0.0.1:50051"
    # repr=False: the URL may carry the Redis password.
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    jwt_secret: SecretStr
    jwt_issuer: str = "genai-auth"
    jwt_audience: str = "genai"
    access_ttl_s: int = Field(1800, gt=0)
    refresh_ttl_s: int = Field(604_800, gt=0)
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(50, ge=1)
    login_window_s: int = Field(300, ge=1)
    # After a Redis failure, Redis is left alone this long before one request tries it again.
    redis_cooldown_s: float = Field(2.0, gt=0)
    # How often revocations of expired tokens are deleted (PostgreSQL and Redis); they are refused anyway.
    revocation_cleanup_interval_s: float = Field(600, gt=0)
    # How often WatchCredentials streams hear that the credential feed is sound when nothing changes;
    # gateways stop trusting their caches after three unheard.
    credential_feed_heartbeat_s: float = Field(1.0, gt=0, le=5)
    migrate_on_start: bool = True

    @model_validator(mode="after")
    def _strong_jwt_secret(self) -> AuthSettings:
        check_secret("GENAI_AUTH_JWT_SECRET", self.jwt_secret, self.env)
        return self


class CliSettings(UserStoreSettings):
    """Settings of genai-auth-admin: no JWT secret or Redis, plus the optional first admin's credentials."""

    admin_user: str | None = Field(None, validation_alias="GENAI_ADMIN_USER")
    admin_password: SecretStr | None = Field(None, validation_alias="GENAI_ADMIN_PASSWORD")
