from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from genai_auth.settings import AuthSettings, CliSettings
from genai_common.settings import load_settings

DSN = "postgresql://auth@db.internal/auth"
STRONG = "k" * 48


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever GENAI_* variables the shell running the tests has must not leak into these settings."""
    for name in list(os.environ):
        if name.startswith("GENAI_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = AuthSettings(database_url=DSN, jwt_secret=STRONG)
    assert settings.listen == "127.0.0.1:50051"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert (settings.jwt_issuer, settings.jwt_audience) == ("genai-auth", "genai")
    assert (settings.access_ttl_s, settings.refresh_ttl_s) == (1800, 604800)
    assert (settings.login_max_failures, settings.login_max_failures_per_address) == (5, 50)
    assert settings.login_window_s == 300
    assert (settings.redis_cooldown_s, settings.revocation_cleanup_interval_s) == (2.0, 600)
    assert settings.metrics_port == 0
    assert settings.migrate_on_start is True
    assert (settings.argon2_time_cost, settings.argon2_memory_cost, settings.argon2_parallelism) == (
        3,
        65536,
        4,
    )


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_AUTH_DATABASE_URL", DSN)
    monkeypatch.setenv("GENAI_AUTH_JWT_SECRET", STRONG)
    monkeypatch.setenv("GENAI_AUTH_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("GENAI_AUTH_METRICS_PORT", "9101")
    monkeypatch.setenv("GENAI_ENV", "dev")
    settings = AuthSettings()
    assert settings.listen == "0.0.0.0:6000"
    assert settings.metrics_port == 9101
    assert settings.env == "dev"


def test_jwt_secret_is_required_even_in_dev() -> None:
    with pytest.raises(ValidationError, match="jwt_secret"):
        AuthSettings(database_url=DSN, GENAI_ENV="dev")
    with pytest.raises(ValidationError, match="must be set"):
        AuthSettings(database_url=DSN, jwt_secret="", GENAI_ENV="dev")


@pytest.mark.parametrize("secret", ["changeme", "secret", "short-but-random-4f9a"])
def test_weak_jwt_secret_refused_outside_dev(secret: str) -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        AuthSettings(database_url=DSN, jwt_secret=secret)
    assert (
        AuthSettings(database_url=DSN, jwt_secret=secret, GENAI_ENV="dev").jwt_secret.get_secret_value()
        == secret
    )


def test_database_url_required_and_checked() -> None:
    with pytest.raises(ValidationError, match="database_url"):
        AuthSettings(jwt_secret=STRONG)
    with pytest.raises(ValidationError, match="postgresql://"):
        AuthSettings(database_url="mysql://x@y/z", jwt_secret=STRONG)


def test_cheap_argon2_only_in_dev() -> None:
    with pytest.raises(ValidationError, match="only allowed with GENAI_ENV=dev"):
        AuthSettings(database_url=DSN, jwt_secret=STRONG, argon2_memory_cost=1024)
    with pytest.raises(ValidationError, match="only allowed with GENAI_ENV=dev"):
        CliSettings(database_url=DSN, argon2_time_cost=1)
    cheap = CliSettings(
        database_url=DSN, argon2_time_cost=1, argon2_memory_cost=64, GENAI_ENV="dev", argon2_parallelism=1
    )
    assert cheap.argon2_memory_cost == 64


def test_settings_errors_do_not_echo_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_AUTH_DATABASE_URL", "postgresql://auth:db-password-123@db/auth")
    monkeypatch.setenv("GENAI_AUTH_JWT_SECRET", "hunter2-weak")
    with pytest.raises(SystemExit) as exited:
        load_settings(AuthSettings)
    message = str(exited.value.code)
    assert "GENAI_AUTH_JWT_SECRET must be a random value" in message
    assert "hunter2-weak" not in message
    assert "db-password-123" not in message
    assert "db-password-123" not in repr(AuthSettings(GENAI_ENV="dev"))


def test_cli_settings_need_no_jwt_secret_or_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_AUTH_DATABASE_URL", DSN)
    monkeypatch.setenv("GENAI_ADMIN_USER", "root.admin")
    monkeypatch.setenv("GENAI_ADMIN_PASSWORD", "a-long-admin-password")
    settings = CliSettings()
    assert settings.admin_user == "root.admin"
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "a-long-admin-password"
