import pytest
from pydantic import ValidationError

from genai_history.settings import HistorySettings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_HISTORY_DATABASE_URL", "postgresql://u:pw@db:5432/history")
    monkeypatch.setenv("GENAI_HISTORY_MAX_MESSAGES", "7")
    monkeypatch.setenv("GENAI_HISTORY_METRICS_PORT", "9102")
    monkeypatch.delenv("GENAI_HISTORY_LISTEN", raising=False)
    settings = HistorySettings()
    assert settings.database_url.get_secret_value() == "postgresql://u:pw@db:5432/history"
    assert "pw" not in repr(settings)
    assert settings.max_messages == 7
    assert settings.metrics_port == 9102
    assert settings.listen == "127.0.0.1:50052"


def test_database_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENAI_HISTORY_DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="database_url"):
        HistorySettings()


def test_refuses_a_non_postgres_url() -> None:
    with pytest.raises(ValidationError, match="postgresql://"):
        HistorySettings(database_url="mysql://db/history")


def test_default_page_size_within_max() -> None:
    with pytest.raises(ValidationError, match="default_page_size"):
        HistorySettings(database_url="postgresql://db/h", default_page_size=50, max_page_size=10)


def test_retention_and_export_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RETENTION_DAYS", "AUDIT_RETENTION_DAYS", "RETENTION_INTERVAL_S", "EXPORT_MAX_MESSAGES"):
        monkeypatch.delenv(f"GENAI_HISTORY_{name}", raising=False)
    defaults = HistorySettings(database_url="postgresql://db/h")
    assert (defaults.retention_days, defaults.audit_retention_days) == (0, 0)
    assert defaults.retention_interval_s == 3600
    assert defaults.export_max_messages == 10_000

    monkeypatch.setenv("GENAI_HISTORY_RETENTION_DAYS", "90")
    monkeypatch.setenv("GENAI_HISTORY_AUDIT_RETENTION_DAYS", "730")
    monkeypatch.setenv("GENAI_HISTORY_RETENTION_INTERVAL_S", "60")
    settings = HistorySettings(database_url="postgresql://db/h")
    assert (settings.retention_days, settings.audit_retention_days, settings.retention_interval_s) == (
        90,
        730,
        60,
    )


@pytest.mark.parametrize(
    "field", [{"retention_days": -1}, {"audit_retention_days": -1}, {"retention_interval_s": 0}]
)
def test_retention_settings_refuse_nonsense(field: dict) -> None:
    with pytest.raises(ValidationError):
        HistorySettings(database_url="postgresql://db/h", **field)
