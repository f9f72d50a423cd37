"""Settings shared by every service. Each service subclasses CommonSettings with its own env prefix."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that people paste from examples; refused as secrets outside dev mode.
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "your-super-secret-key-change-in-production"}
MIN_SECRET_LENGTH = 32

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENAI_", extra="ignore")

    # "dev" relaxes nothing about secrets: it only allows generated ones in a local work folder.
    env: Literal["dev", "prod"] = Field("prod", validation_alias="GENAI_ENV")
    log_level: str = Field("INFO", validation_alias="GENAI_LOG_LEVEL")
    # Port of the Prometheus /metrics HTTP endpoint of a gRPC service; 0 turns it off.
    metrics_port: int = 0


class InternalServiceSettings(CommonSettings):
    """A service inside the stack (gateway, auth, history, adapter): internal calls are mutual TLS."""

    # The internal CA's certificate, and this service's own certificate and key (PEM); genai_common.mtls
    # makes them. Required outside dev mode.
    mtls_ca_file: str = ""
    mtls_cert_file: str = ""
    mtls_key_file: str = ""


def check_secret(name: str, value: SecretStr | None, env: str) -> SecretStr:
    """Refuse a missing, placeholder or short secret; dev mode still needs one, just not a strong one."""
    raw = value.get_secret_value() if value is not None else ""
    if not raw:
        raise ValueError(f"{name} must be set")
    if env != "dev" and (raw.lower() in PLACEHOLDER_SECRETS or len(raw) < MIN_SECRET_LENGTH):
        raise ValueError(f"{name} must be a random value of at least {MIN_SECRET_LENGTH} characters")
    return SecretStr(raw)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Build settings from the environment, or exit naming each bad variable without its value.

    pydantic's own message echoes the rejected input, which for a secret or a DSN is the secret itself.
    """
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix") or "")
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            loc = error["loc"]
            if loc:  # a field; otherwise a check across fields, whose message names them itself
                field = cls.model_fields.get(str(loc[0]))
                alias = field.validation_alias if field is not None else None
                message = f"{alias if isinstance(alias, str) else f'{prefix}{loc[0]}'.upper()}: {message}"
            problems.append(message)
        raise SystemExit("invalid settings: " + "; ".join(problems)) from None
