"""The bot refuses settings it cannot run with, naming the variable and never echoing a secret."""

from __future__ import annotations

import os

import pytest

from genai_common.settings import load_settings
from genai_telegram.settings import TelegramSettings

TOKEN = "123456789:AAH" + "x" * 32
STORE_KEY = "0a1b2c3d" * 8


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("GENAI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("GENAI_TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("GENAI_TELEGRAM_STORE_KEY", STORE_KEY)
    monkeypatch.setenv("GENAI_TELEGRAM_GATEWAY_URL", "https://genai.corp.example")


def test_the_defaults_are_long_polling_in_private_chats() -> None:
    settings = load_settings(TelegramSettings)
    assert (settings.mode, settings.allow_groups, settings.bot_api_base_url) == (
        "polling",
        False,
        "https://api.telegram.org",
    )
    assert settings.link_page == "https://genai.corp.example/"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("GENAI_TELEGRAM_BOT_TOKEN", "", "GENAI_TELEGRAM_BOT_TOKEN must be a bot token"),
        ("GENAI_TELEGRAM_BOT_TOKEN", "not-a-token-at-all", "GENAI_TELEGRAM_BOT_TOKEN must be a bot token"),
        ("GENAI_TELEGRAM_STORE_KEY", "short", "GENAI_TELEGRAM_STORE_KEY must be a random value"),
        ("GENAI_TELEGRAM_GATEWAY_URL", "", "GENAI_TELEGRAM_GATEWAY_URL must be"),
        ("GENAI_TELEGRAM_PROXY_URL", "socks5://proxy:1080", "GENAI_TELEGRAM_PROXY_URL must be"),
        ("GENAI_TELEGRAM_MODE", "webhook", "GENAI_TELEGRAM_WEBHOOK_URL must be an https:// URL"),
    ],
)
def test_unusable_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        load_settings(TelegramSettings)
    assert says in str(refused.value)
    assert TOKEN not in str(refused.value) and STORE_KEY not in str(refused.value)


def test_webhook_mode_needs_a_secret_telegram_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_TELEGRAM_MODE", "webhook")
    monkeypatch.setenv("GENAI_TELEGRAM_WEBHOOK_URL", "https://bot.corp.example/telegram")
    monkeypatch.setenv("GENAI_TELEGRAM_WEBHOOK_SECRET", "a.b" * 20)
    with pytest.raises(SystemExit, match="may hold only"):
        load_settings(TelegramSettings)
    monkeypatch.setenv("GENAI_TELEGRAM_WEBHOOK_SECRET", "a-b_c" * 10)
    assert load_settings(TelegramSettings).webhook_secret is not None
