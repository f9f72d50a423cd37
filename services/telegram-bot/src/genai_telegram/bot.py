"""The bot's conversation: linking, questions answered by streaming edits, /new, /history, /unlink.

Rules it keeps, and why:
- nothing reaches the model for an account without a live link: the store is asked first, and the gateway
  refuses a key whose link was ended elsewhere (then the bot forgets it and says how to link again);
- only private chats, unless GENAI_TELEGRAM_ALLOW_GROUPS: a group would show one person's answers, and
  their link code, to everyone in it; never a sender who stands for someone unknown (a group's anonymous
  admin, a channel), whose Telegram id many people share;
- one question at a time per account, in order, so each lands in the conversation the previous one made;
  at most GENAI_TELEGRAM_MAX_PENDING_QUESTIONS wait, the rest are declined with a word, so that one
  account's burst cannot hold the bot's hands (`MAX_CONCURRENT_UPDATES` updates at a time) for long;
- Telegram's flood control is obeyed: a 429's retry_after is waited out; an intermediate edit that meets
  one is dropped (the next edit carries newer text), while a new message or a final edit is retried, so no
  part of an answer is lost; "message is not modified" means the edit is already there;
- no error of Telegram's ends an answer: the gateway's stream is read to its end whatever Telegram says, so
  the exchange is stored whole and the next question continues its conversation. A failed intermediate
  edit is dropped; a new message or a final edit that fails on the way (a timeout, a proxy's 502) is tried
  again; a message the user deleted while it was being written is sent again; a refusal (the user blocked
  the bot) is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MessageEntity,
    Update,
)
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    BaseHandler,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from genai_common.waiting import within
from genai_telegram.gateway import Gateway, Limited, Refused, Unavailable, Unlinked
from genai_telegram.render import render, split
from genai_telegram.settings import TelegramSettings
from genai_telegram.store import Link, LinkStore
from genai_telegram.texts import language, text, wait

logger = logging.getLogger(__name__)

# Telegram shows "typing..." for about five seconds per action.
TYPING_EVERY_S = 4.0
# Tries of a send or final edit that keeps meeting 429s (each waits the retry_after it was given).
MUST_TRIES = 8
# Pause before trying a failed send or final edit again, doubled each time up to the most.
NETWORK_PAUSE_S = 0.5
NETWORK_PAUSE_MAX_S = 8.0
# Senders that stand for someone unknown: Telegram posts a group's anonymous admins as GroupAnonymousBot,
# messages sent on behalf of a channel as Channel_Bot, and a channel's posts in its discussion group as
# "Telegram". Everyone behind one of them would share the account linked to it.
ANONYMOUS_SENDERS = frozenset({1087968824, 136817688, 777000})
# Updates handled at once, across accounts: each waiting answer holds one (python-telegram-bot's default
# is 256, fewer than the people a slow model can keep waiting).
MAX_CONCURRENT_UPDATES = 2048
# On stopping, how long the note on an answer cut short may take.
STOP_NOTE_S = 5.0
CONVERSATION_BUTTON = "c:"
MAX_BUTTON_TITLE = 48


def _seconds(retry_after: int | float | timedelta) -> float:
    return retry_after.total_seconds() if isinstance(retry_after, timedelta) else float(retry_after)


class _MessageGone(Exception):
    """The message to edit is no more (the user deleted it): its part is sent again."""


class StreamedReply:
    """One answer shown as one or more messages, each edited as the answer grows."""

    def __init__(self, bot: Bot, chat_id: int, interval_s: float) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._interval_s = interval_s
        # (message id, the text it shows now), in order.
        self._messages: list[tuple[int, str]] = []
        self._next_edit = 0.0

    @property
    def started(self) -> bool:
        return bool(self._messages)

    async def update(self, markdown: str) -> None:
        """Show the answer so far, unless the last edit is too recent."""
        if time.monotonic() < self._next_edit:
            return
        await self._show(markdown, final=False)

    async def finish(self, markdown: str) -> None:
        await self._show(markdown, final=True)

    async def _show(self, markdown: str, final: bool) -> None:
        parts = split(markdown)
        for index, part in enumerate(parts):
            if index < len(self._messages):
                message_id, shown = self._messages[index]
                if shown != part:
                    # An earlier part is final once a later one exists.
                    try:
                        done = await self._call(
                            self._edit, message_id, part, must=final or index < len(parts) - 1
                        )
                    except _MessageGone:
                        sent = await self._call(self._send, part, must=True)
                        if sent is not None:
                            self._messages[index] = (sent, part)
                        continue
                    if done:
                        self._messages[index] = (message_id, part)
            else:
                sent = await self._call(self._send, part, must=True)
                if sent is not None:
                    self._messages.append((sent, part))
        self._next_edit = time.monotonic() + self._interval_s

    async def _call(self, method: Any, *args: Any, must: bool) -> Any:
        """The method's result; None if it failed (tried again first if `must`). Raises only _MessageGone."""
        backoff = NETWORK_PAUSE_S
        for _ in range(MUST_TRIES if must else 1):
            try:
                return await method(*args)
            except RetryAfter as exc:
                pause = _seconds(exc.retry_after)
                logger.info("bot api flood control: waiting %.1f s", pause)
                await asyncio.sleep(pause)
                # Whatever comes next waits too.
                self._next_edit = time.monotonic() + self._interval_s
            except BadRequest as exc:
                # The request itself is refused: sending it again would be refused again.
                if method == self._edit and _gone(exc):
                    raise _MessageGone from None
                logger.warning("bot api refused a part of an answer in chat %s: %s", self._chat_id, exc)
                return None
            except NetworkError as exc:
                # On the way (a timeout, the proxy's 502): a send that timed out may have landed, and is
                # shown twice if it did; better than a part missing.
                if not must:
                    return None
                logger.info("bot api call failed (%s); trying again in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, NETWORK_PAUSE_MAX_S)
            except TelegramError as exc:
                # Forbidden (the user blocked the bot) and the like: nobody to show the answer to.
                logger.warning("bot api refused a part of an answer in chat %s: %s", self._chat_id, exc)
                return None
        if must:
            logger.error("bot api kept refusing a part of an answer in chat %s", self._chat_id)
        return None

    async def _send(self, part: str) -> int:
        rendered = render(part)
        message = await self._bot.send_message(
            self._chat_id, rendered.text, entities=_entities(rendered.entities)
        )
        return message.message_id

    async def _edit(self, message_id: int, part: str) -> bool:
        rendered = render(part)
        try:
            await self._bot.edit_message_text(
                rendered.text,
                chat_id=self._chat_id,
                message_id=message_id,
                entities=_entities(rendered.entities),
            )
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                raise
        return True


async def _while_stopping(last_word: Awaitable[None]) -> None:
    """Say a last word to a chat while the bot stops: within STOP_NOTE_S, whatever fails."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await within(last_word, STOP_NOTE_S)


def _gone(exc: BadRequest) -> bool:
    message = str(exc).lower()
    return "message to edit not found" in message or "message can't be edited" in message


def _entities(entities: tuple[Any, ...]) -> list[MessageEntity]:
    return [MessageEntity(e.type, e.offset, e.length, language=e.language or None) for e in entities]


class ChatBot:
    def __init__(self, settings: TelegramSettings, gateway: Gateway, store: LinkStore) -> None:
        self._settings = settings
        self._gateway = gateway
        self._store = store
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pending: defaultdict[int, int] = defaultdict(int)
        self._answering: set[asyncio.Task[Any]] = set()

    def handlers(self) -> list[BaseHandler[Any, Any, Any]]:
        return [
            CommandHandler("start", self.start),
            CommandHandler("link", self.link),
            CommandHandler("unlink", self.unlink),
            CommandHandler("new", self.new),
            CommandHandler("history", self.history),
            CommandHandler("help", self.help),
            CallbackQueryHandler(self.switch, pattern=f"^{CONVERSATION_BUTTON}"),
            MessageHandler(filters.TEXT & ~filters.COMMAND, self.question),
        ]

    # --- helpers ------------------------------------------------------------------------------------

    async def _admitted(self, update: Update) -> str | None:
        """The account's language if this chat may be served; otherwise says why not and returns None."""
        user, chat = update.effective_user, update.effective_chat
        if user is None or chat is None:
            return None
        lang = language(user.language_code)
        if chat.type != ChatType.PRIVATE and not self._settings.allow_groups:
            await self._say(update, text(lang, "groups"))
            return None
        message = update.effective_message
        if user.id in ANONYMOUS_SENDERS or (message is not None and message.sender_chat is not None):
            await self._say(update, text(lang, "anonymous"))
            return None
        return lang

    async def _say(self, update: Update, message: str, **kwargs: Any) -> None:
        chat = update.effective_chat
        if chat is None:
            return
        for _ in range(MUST_TRIES):
            try:
                await chat.send_message(message, **kwargs)
                return
            except RetryAfter as exc:
                await asyncio.sleep(_seconds(exc.retry_after))

    def _link(self, update: Update) -> Link | None:
        assert update.effective_user is not None
        return self._store.get(update.effective_user.id)

    async def _linked(self, update: Update, lang: str) -> Link | None:
        """The account's link; without one, tells the user how to link and returns None."""
        link = self._link(update)
        if link is None:
            await self._say(update, text(lang, "not_linked", page=self._settings.link_page))
        return link

    async def _ended(self, update: Update, lang: str, link: Link) -> None:
        self._store.delete(link.telegram_user_id, link.link_id)
        await self._say(update, text(lang, "link_ended", page=self._settings.link_page))

    async def _typing(self, chat_id: int, bot: Bot) -> None:
        while True:
            pause = TYPING_EVERY_S
            try:
                await bot.send_chat_action(chat_id, ChatAction.TYPING)
            except RetryAfter as exc:
                # Flood control covers the whole chat: the answer's own messages matter more.
                pause = max(pause, _seconds(exc.retry_after))
            except TelegramError:
                pass
            await asyncio.sleep(pause)

    # --- commands -----------------------------------------------------------------------------------

    async def start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if context.args:
            await self.link(update, context)
            return
        lang = await self._admitted(update)
        if lang is None:
            return
        if await self._linked(update, lang) is not None:
            await self._say(update, text(lang, "help"))

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        if lang is not None:
            await self._say(update, text(lang, "help"))

    async def link(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        if lang is None:
            return
        user = update.effective_user
        assert user is not None
        code = "".join(context.args or [])
        if not code:
            await self._say(update, text(lang, "link_usage"))
            return
        try:
            redeemed = await self._gateway.redeem(code, user.id, user.username or "")
        except Refused:
            await self._say(update, text(lang, "bad_code"))
            return
        except (Unavailable, Limited, Unlinked):
            await self._say(update, text(lang, "unavailable"))
            return
        async with self._locks[user.id]:
            earlier = self._store.get(user.id)
            self._store.put(user.id, redeemed.link_id, redeemed.owner, redeemed.api_key)
        if earlier is not None and earlier.link_id != redeemed.link_id:
            # The account's earlier link (to another user: auth ends one to the same user itself) ends with
            # its own key, so that its owner does not keep a live link nobody uses.
            try:
                await self._gateway.unlink(earlier.api_key, earlier.link_id)
            except Unlinked:
                pass
            except (Unavailable, Limited, Refused) as exc:
                logger.warning("could not end the earlier link %s: %s", earlier.link_id, exc)
        logger.info("telegram account linked (link %s)", redeemed.link_id)
        await self._say(update, text(lang, "linked", owner=redeemed.owner))

    async def unlink(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        if lang is None:
            return
        link = await self._linked(update, lang)
        if link is None:
            return
        try:
            await self._gateway.unlink(link.api_key, link.link_id)
        except Unlinked:
            pass  # ended already, elsewhere
        except (Unavailable, Limited, Refused):
            await self._say(update, text(lang, "unavailable"))
            return
        self._store.delete(link.telegram_user_id, link.link_id)
        await self._say(update, text(lang, "unlinked", owner=link.owner))

    async def new(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        if lang is None:
            return
        link = await self._linked(update, lang)
        if link is None:
            return
        async with self._locks[link.telegram_user_id]:
            self._store.set_conversation(link.telegram_user_id, "")
        await self._say(update, text(lang, "new"))

    async def history(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        if lang is None:
            return
        link = await self._linked(update, lang)
        if link is None:
            return
        try:
            conversations = await self._gateway.conversations(link.api_key, self._settings.history_size)
        except Unlinked:
            await self._ended(update, lang, link)
            return
        except (Unavailable, Limited, Refused):
            await self._say(update, text(lang, "unavailable"))
            return
        if not conversations:
            await self._say(update, text(lang, "no_history"))
            return
        buttons = []
        for conversation in conversations:
            title = (conversation.get("title") or text(lang, "untitled"))[:MAX_BUTTON_TITLE]
            mark = "\u2022 " if conversation["id"] == link.conversation_id else ""
            buttons.append(
                [
                    InlineKeyboardButton(
                        f"{mark}{title}", callback_data=CONVERSATION_BUTTON + conversation["id"]
                    )
                ]
            )
        await self._say(update, text(lang, "history"), reply_markup=InlineKeyboardMarkup(buttons))

    async def switch(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        with contextlib.suppress(TelegramError):
            await query.answer()
        lang = await self._admitted(update)
        if lang is None:
            return
        link = await self._linked(update, lang)
        if link is None:
            return
        conversation_id = (query.data or "").removeprefix(CONVERSATION_BUTTON)
        try:
            conversation = await self._gateway.conversation(link.api_key, conversation_id)
        except Unlinked:
            await self._ended(update, lang, link)
            return
        except Refused:
            await self._say(update, text(lang, "gone"))
            return
        except (Unavailable, Limited):
            await self._say(update, text(lang, "unavailable"))
            return
        async with self._locks[link.telegram_user_id]:
            self._store.set_conversation(link.telegram_user_id, conversation["id"])
        title = conversation.get("title") or text(lang, "untitled")
        await self._say(update, text(lang, "switched", title=title))

    # --- questions ----------------------------------------------------------------------------------

    async def question(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        lang = await self._admitted(update)
        message = update.effective_message
        if lang is None or message is None or not message.text:
            return
        if await self._linked(update, lang) is None:
            return
        assert update.effective_user is not None and update.effective_chat is not None
        account = update.effective_user.id
        if self._pending[account] >= self._settings.max_pending_questions:
            await self._say(update, text(lang, "busy"))
            return
        self._pending[account] += 1
        try:
            async with self._locks[account]:
                link = await self._linked(update, lang)  # again: the conversation the previous question made
                if link is None:
                    return
                task = asyncio.current_task()
                assert task is not None
                self._answering.add(task)
                try:
                    await self._answer(update, context.bot, link, message.text, lang)
                finally:
                    self._answering.discard(task)
        finally:
            self._pending[account] -= 1
            if not self._pending[account]:
                del self._pending[account]

    async def stop(self, grace_s: float) -> None:
        """Let the answers being written finish for `grace_s`, then end the rest with a note saying so."""
        if self._answering:
            await asyncio.wait(set(self._answering), timeout=grace_s)
        left = set(self._answering)
        for task in left:
            task.cancel()
        if left:
            logger.info("stopping: %d answer(s) cut short", len(left))
            await asyncio.wait(left, timeout=STOP_NOTE_S + 1)

    async def _answer(self, update: Update, bot: Bot, link: Link, prompt: str, lang: str) -> None:
        assert update.effective_chat is not None
        chat_id = update.effective_chat.id
        reply = StreamedReply(bot, chat_id, self._settings.edit_interval_s)
        typing = asyncio.create_task(self._typing(chat_id, bot))
        answer, note = "", ""
        conversation_id = link.conversation_id
        try:
            for _attempt in range(2):
                try:
                    async for event in self._gateway.ask(link.api_key, prompt, conversation_id):
                        kind = event.get("type")
                        if kind == "delta":
                            answer += event.get("text", "")
                            if answer.strip():
                                typing.cancel()
                                await reply.update(answer)
                        elif kind == "done":
                            answer = event.get("response") or answer
                            if event.get("conversation_id"):
                                self._store.set_conversation(link.telegram_user_id, event["conversation_id"])
                        elif kind == "error":
                            note = text(lang, "cut_short", message=event.get("detail", ""))
                    break
                except Refused as exc:
                    # The current conversation was deleted (web page): the question starts a new one.
                    if exc.status == 404 and conversation_id and not answer:
                        conversation_id = ""
                        self._store.set_conversation(link.telegram_user_id, "")
                        continue
                    raise
        except Unlinked:
            await self._ended(update, lang, link)
            return
        except Limited as exc:
            await self._say(update, text(lang, "limited", wait=wait(lang, exc.retry_after_s)))
            return
        except (Unavailable, Refused) as exc:
            if not answer:
                key = "unavailable" if isinstance(exc, Unavailable) else "refused"
                await self._say(update, text(lang, key, message=str(exc)))
                return
            note = text(lang, "cut_short", message=text(lang, "unavailable"))
        except asyncio.CancelledError:
            # The bot is stopping: what was written stays, with a word on why it ends there.
            typing.cancel()
            cut = text(lang, "cut_short", message=text(lang, "restarting"))
            await _while_stopping(
                reply.finish(f"{answer}\n\n{cut}") if reply.started else self._say(update, cut)
            )
            raise
        finally:
            typing.cancel()
        whole = f"{answer}\n\n{note}" if note else answer
        try:
            await reply.finish(whole)
        except asyncio.CancelledError:
            # Stopping while the whole answer is being shown: it is shown whole, within the note's time.
            await _while_stopping(reply.finish(whole))
            raise


class PollingRequest(HTTPXRequest):
    """getUpdates' own connection, noting when Telegram last answered it (`heard_at`, monotonic): a bot whose
    polls keep failing (a second instance polling with the same token gets 409, a proxy gone) takes no
    update, and its /health says so."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heard_at: float | None = None

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        status, payload = await super().do_request(*args, **kwargs)
        if status == 200:
            self.heard_at = time.monotonic()
        return status, payload


def build_application(
    settings: TelegramSettings, chat: ChatBot, polling: PollingRequest | None = None
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The bot; `polling` (long polling only) carries getUpdates."""
    base = settings.bot_api_base_url.rstrip("/")
    builder = (
        Application.builder()
        .token(settings.bot_token.get_secret_value())
        .base_url(f"{base}/bot")
        .base_file_url(f"{base}/file/bot")
        # Users are served side by side; one user's questions wait for each other (ChatBot's locks).
        .concurrent_updates(MAX_CONCURRENT_UPDATES)
        .connection_pool_size(32)
        .pool_timeout(30)
        .connect_timeout(10)
        .read_timeout(settings.bot_api_timeout_s)
        .write_timeout(settings.bot_api_timeout_s)
    )
    if settings.proxy_url:
        builder = builder.proxy(settings.proxy_url)
    if polling is not None:
        builder = builder.get_updates_request(polling)
    else:
        builder = builder.get_updates_read_timeout(settings.poll_timeout_s + 10)
        if settings.proxy_url:
            builder = builder.get_updates_proxy(settings.proxy_url)
    if settings.mode == "webhook":
        builder = builder.updater(None)
    application = builder.build()
    application.add_handlers(chat.handlers())
    application.add_error_handler(_log_error)
    return application


async def _log_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    logger.error("update failed: %r", context.error, exc_info=context.error)
