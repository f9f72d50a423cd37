"""Entry point: `genai-telegram-bot` (or `python -m genai_telegram`).

Long polling by default: the bot calls out (through the site's proxy, if set) and needs no inbound port.
With GENAI_TELEGRAM_MODE=webhook, Telegram posts updates to GENAI_TELEGRAM_WEBHOOK_URL, which the site's
reverse proxy forwards to this process's port; each post must carry the secret token set with the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.error import NetworkError, TimedOut
from telegram.ext import Application

from genai_common.logs import setup_logging
from genai_common.metrics import serve_metrics
from genai_common.settings import load_settings
from genai_common.waiting import within
from genai_telegram.bot import ChatBot, PollingRequest, build_application
from genai_telegram.gateway import Gateway
from genai_telegram.settings import TelegramSettings
from genai_telegram.store import LinkStore, WrongStoreKey

logger = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query"]
# Telegram (or its proxy) unreachable at start: try again this often rather than exit.
START_RETRY_S = 5.0


def http_app(
    application: Application[Any, Any, Any, Any, Any, Any],
    secret: str | None,
    polling: PollingRequest | None = None,
    deaf_after_s: float = 0.0,
) -> Starlette:
    """GET /health (200 while the bot takes updates: in long polling, while Telegram answered a poll in the
    last `deaf_after_s`); POST /telegram for Telegram's webhook, when `secret`."""

    async def receive(request: Request) -> Response:
        given = request.headers.get("x-telegram-bot-api-secret-token", "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return JSONResponse({"detail": "wrong secret token"}, status_code=403)
        try:
            update = Update.de_json(await request.json(), application.bot)
        except ValueError:
            return JSONResponse({"detail": "not an update"}, status_code=400)
        await application.update_queue.put(update)
        return Response(status_code=200)

    async def health(request: Request) -> Response:
        updater = application.updater
        up = application.running and (updater is None or updater.running)
        if not up:
            return JSONResponse({"status": "starting"}, status_code=503)
        heard_at = polling.heard_at if polling is not None else None
        if polling is not None and (heard_at is None or time.monotonic() - heard_at > deaf_after_s):
            return JSONResponse({"status": "not hearing Telegram: its polls fail"}, status_code=503)
        return JSONResponse({"status": "ok"})

    routes = [Route("/health", health)]
    if secret is not None:
        routes.append(Route("/telegram", receive, methods=["POST"]))
    return Starlette(routes=routes)


async def _initialize(application: Application[Any, Any, Any, Any, Any, Any], stop: asyncio.Event) -> bool:
    """getMe until it answers (a site whose proxy is down at boot keeps the bot waiting, not exiting)."""
    while not stop.is_set():
        try:
            await application.initialize()
            return True
        except (NetworkError, TimedOut) as exc:
            logger.warning("the Bot API does not answer (%s); trying again in %s s", exc, START_RETRY_S)
            with contextlib.suppress(TimeoutError):
                await within(stop.wait(), START_RETRY_S)
    return False


async def run(settings: TelegramSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        store = LinkStore(settings.store_path, settings.store_key.get_secret_value())
    except WrongStoreKey as exc:
        logger.error("%s", exc)
        raise SystemExit(2) from None
    gateway = Gateway(settings)
    chat = ChatBot(settings, gateway, store)
    polling = None
    if settings.mode == "polling":
        polling = PollingRequest(
            connection_pool_size=1,
            read_timeout=settings.poll_timeout_s + 10,
            write_timeout=settings.bot_api_timeout_s,
            connect_timeout=10,
            pool_timeout=30,
            proxy=settings.proxy_url or None,
        )
    application = build_application(settings, chat, polling)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    server = uvicorn.Server(
        uvicorn.Config(
            http_app(
                application,
                secret if settings.mode == "webhook" else None,
                polling,
                # A poll lasts poll_timeout_s when nothing comes: two of them missed, and a slow answer's
                # worth more, is no slow moment.
                deaf_after_s=2 * settings.poll_timeout_s + settings.bot_api_timeout_s,
            ),
            host=settings.host,
            port=settings.port,
            log_config=None,
        )
    )
    serving = asyncio.create_task(server.serve())
    metrics = serve_metrics(settings.metrics_port, settings.host)
    try:
        if not await _initialize(application, stop):
            return
        await application.start()
        logger.info("telegram bot @%s started (%s)", application.bot.username, settings.mode)
        if settings.mode == "polling":
            assert application.updater is not None
            await application.updater.start_polling(
                timeout=settings.poll_timeout_s, allowed_updates=ALLOWED_UPDATES
            )
            if polling is not None and polling.heard_at is None:
                # The first poll has its time to be answered before /health counts it missing.
                polling.heard_at = time.monotonic()
        else:
            await application.bot.set_webhook(
                settings.webhook_url, secret_token=secret, allowed_updates=ALLOWED_UPDATES
            )
        await stop.wait()
    finally:
        # The answers being written get GENAI_TELEGRAM_STOP_GRACE_S from now, then end with a note.
        answers_stopped = asyncio.create_task(chat.stop(settings.stop_grace_s))
        server.should_exit = True
        await serving
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        await answers_stopped
        if application.running:
            await application.stop()
        if application._initialized:  # noqa: SLF001 (PTB has no public flag for it)
            await application.shutdown()
        await gateway.close()
        store.close()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


def main() -> None:
    settings = load_settings(TelegramSettings)
    setup_logging("telegram-bot", settings.log_level)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
