"""The bot's settings: GENAI_TELEGRAM_*."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from genai_common.settings import CommonSettings, check_secret

# What BotFather hands out: "<bot id>:<secret>".
_TOKEN = re.compile(r"\d{1,20}:[A-Za-z0-9_-]{20,100}")


class TelegramSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="GENAI_TELEGRAM_", extra="ignore")

    # From BotFather; a secret (compose passes it from .env). Required: empty is refused at start.
    bot_token: SecretStr = Field(SecretStr(""), repr=False)
    # Encrypts the API keys the bot keeps for linked users, so that its store alone gives none away.
    # Required, as bot_token.
    store_key: SecretStr = Field(SecretStr(""), repr=False)
    # The bot's own small database: linked accounts, their encrypted keys, each one's current conversation.
    store_path: Path = Path("telegram-bot.sqlite3")

    # The service's public HTTPS address (nginx), as its certificate names it, and a file of certificates
    # to trust for it: its CA, or the certificate (chain) nginx serves (empty: the system's trust store).
    # Required.
    gateway_url: str = ""
    gateway_ca_file: str = ""
    gateway_timeout_s: float = Field(300.0, gt=0)
    # Where users make a link code; shown to unlinked accounts. Empty: gateway_url.
    web_url: str = ""

    # A local telegram-bot-api server instead of Telegram's, e.g. http://telegram-bot-api:8081.
    bot_api_base_url: str = "https://api.telegram.org"
    # The site's outbound proxy for reaching the Bot API (http:// or https://).
    proxy_url: str = Field("", repr=False)
    bot_api_timeout_s: float = Field(30.0, gt=0)

    # The bot's own HTTP port: GET /health always; POST /telegram in webhook mode.
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=1, le=65535)
    # "polling" needs no inbound port; "webhook" has Telegram post to webhook_url, which the site's
    # reverse proxy forwards to POST /telegram here.
    mode: Literal["polling", "webhook"] = "polling"
    poll_timeout_s: int = Field(30, ge=0, le=50)
    webhook_url: str = ""
    webhook_secret: SecretStr | None = Field(None, repr=False)

    # Group chats are refused unless this is on (each member still needs a link of their own).
    allow_groups: bool = False
    max_tokens: int = Field(1024, ge=1)
    # Telegram accepts about one edit a second per chat; a streamed answer is edited at most this often.
    edit_interval_s: float = Field(1.5, ge=0.05)
    # Recent conversations offered by /history.
    history_size: int = Field(10, ge=1, le=50)
    # One account's questions answered or waiting their turn; one more is declined with a word. Above the
    # per-minute request limit, so that a burst meets the limit's message first.
    max_pending_questions: int = Field(40, ge=1)
    # On stopping, how long answers being written may take to finish; the rest end with a note saying so.
    # Below the time compose gives the bot to stop (30 s), after which it is killed.
    stop_grace_s: float = Field(20.0, ge=0)

    @model_validator(mode="after")
    def _secrets(self) -> TelegramSettings:
        if not _TOKEN.fullmatch(self.bot_token.get_secret_value()):
            raise ValueError(
                "GENAI_TELEGRAM_BOT_TOKEN must be a bot token as BotFather gives it (<digits>:<secret>)"
            )
        self.store_key = check_secret("GENAI_TELEGRAM_STORE_KEY", self.store_key, self.env)
        if self.mode == "webhook":
            if not self.webhook_url.startswith("https://"):
                raise ValueError("GENAI_TELEGRAM_WEBHOOK_URL must be an https:// URL in webhook mode")
            self.webhook_secret = check_secret("GENAI_TELEGRAM_WEBHOOK_SECRET", self.webhook_secret, self.env)
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", self.webhook_secret.get_secret_value()):
                raise ValueError(
                    "GENAI_TELEGRAM_WEBHOOK_SECRET may hold only A-Z, a-z, 0-9, _ and - (Telegram's rule)"
                )
        if not self.gateway_url.startswith(("https://", "http://")):
            raise ValueError("GENAI_TELEGRAM_GATEWAY_URL must be the service's https:// address")
        if self.proxy_url and not self.proxy_url.startswith(("http://", "https://")):
            raise ValueError("GENAI_TELEGRAM_PROXY_URL must be an http:// or https:// proxy")
        return self

    @property
    def link_page(self) -> str:
        return (self.web_url or self.gateway_url).rstrip("/") + "/"
