"""A fake Telegram Bot API server for the bot's tests: Telegram itself cannot be reached from here.

It speaks the real wire format at `/bot<token>/<method>` (also as an HTTP proxy would get it, with the
Bot API's absolute URL as the request target) (form-encoded or JSON parameters in, `{"ok": true,
"result": ...}` or `{"ok": false, "error_code", "description", "parameters"}` out) for the methods the bot
uses: getMe, deleteWebhook, getUpdates (long polling with offset and timeout), sendMessage,
editMessageText, sendChatAction and answerCallbackQuery. Like Telegram it refuses an empty message, one
over 4,096 UTF-16 code units, entities outside the text, an edit to the same content ("message is not
modified"), and, once told to, answers 429 with retry_after, then keeps refusing that chat until the time
is up, counting every call that came too early (`violations`).

The server runs in a thread of its own, so that tests (plain functions) can wait for what the bot does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from genai_devstack import infra

BOT_ID = 7000001
LIMIT = 4096
# Parameters that the Bot API takes as JSON inside a form field.
_JSON_FIELDS = {"entities", "reply_markup", "allowed_updates"}
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Sent:
    """A message the bot sent, as it reads now."""

    chat_id: int
    message_id: int
    text: str
    entities: list[dict[str, Any]]
    reply_markup: dict[str, Any] | None
    edits: int = 0


@dataclass
class TelegramUser:
    id: int
    first_name: str
    username: str
    language_code: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
            "username": self.username,
            "language_code": self.language_code,
        }


@dataclass
class _Flood:
    method: str
    retry_after: int
    times: int


@dataclass
class FakeBotApi:
    token: str
    port: int = field(default_factory=infra.free_port)
    username: str = "genai_test_bot"
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    actions: list[tuple[int, str]] = field(default_factory=list)
    callback_answers: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    too_many: int = 0
    not_modified: int = 0
    _not_modified: int = 0
    violations: int = 0
    # Host headers the calls came with: a proxy's client names the Bot API's host, not this server's.
    hosts: set[str] = field(default_factory=set)
    # (url, secret_token) while a webhook is set.
    webhook: tuple[str, str] | None = None
    _floods: list[_Flood] = field(default_factory=list)
    # (method, HTTP status, description, and whether the message goes as if the user deleted it) of the next
    # calls to fail, in order.
    _failures: list[tuple[str, int, str, bool]] = field(default_factory=list)
    _blocked_until: dict[int, float] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _message_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    _chat_types: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the test's side --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        app = Starlette(routes=[Route("/bot{token}/{method}", self._handle, methods=["GET", "POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self._thread = threading.Thread(target=self._server.run, name="fake-bot-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not infra.port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Bot API did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    def send_text(
        self, user: TelegramUser, text: str, *, chat_id: int | None = None, chat_type: str = "private"
    ) -> int:
        """A message from `user` (in their private chat unless told otherwise); returns the chat id."""
        chat_id = user.id if chat_id is None else chat_id
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = user.first_name
        else:
            chat["title"] = "Team chat"
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "from": user.as_dict(),
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(command)}]
        with self._lock:
            self._chat_types[chat_id] = chat_type
            self.updates.append({"update_id": next(self._ids), "message": message})
        return chat_id

    def press(self, user: TelegramUser, sent: Sent, data: str) -> str:
        """The user taps an inline button of a message the bot sent; returns the callback query's id."""
        query_id = f"cq{next(self._ids)}"
        message = {
            "message_id": sent.message_id,
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "GenAI", "username": self.username},
            "chat": {"id": sent.chat_id, "type": self._chat_types.get(sent.chat_id, "private")},
            "date": int(time.time()),
            "text": sent.text,
        }
        with self._lock:
            self.updates.append(
                {
                    "update_id": next(self._ids),
                    "callback_query": {
                        "id": query_id,
                        "from": user.as_dict(),
                        "chat_instance": str(sent.chat_id),
                        "message": message,
                        "data": data,
                    },
                }
            )
        return query_id

    def already_shown(self, times: int = 1) -> None:
        """The next `times` edits answer "message is not modified", as when an edit's answer was lost and
        the same edit came again: its first attempt landed, so the message shows the edit's text."""
        with self._lock:
            self._not_modified += times

    def flood(self, method: str, retry_after: int, times: int = 1) -> None:
        """The next `times` calls of `method` answer 429 with this retry_after."""
        with self._lock:
            self._floods.append(_Flood(method, retry_after, times))

    def fail(self, method: str, status: int, description: str, *, times: int = 1) -> None:
        """The next `times` calls of `method` fail with this status and description (a 502 from a proxy on
        the way, a 500 of Telegram's) and change nothing."""
        with self._lock:
            self._failures.extend([(method, status, description, False)] * times)

    def recover(self, method: str) -> None:
        """The failures still pending for `method` are off."""
        with self._lock:
            self._failures = [f for f in self._failures if f[0] != method]

    def delete_before_next_edit(self) -> None:
        """The user deletes the message the next edit is for, just before it comes: the edit answers
        "message to edit not found"."""
        with self._lock:
            self._failures.append(("editMessageText", 400, "Bad Request: message to edit not found", True))

    def messages(self, chat_id: int) -> list[Sent]:
        with self._lock:
            return [m for m in self.sent if m.chat_id == chat_id]

    def wait_for(self, what: Callable[[], Any], timeout_s: float = 60, why: str = "") -> Any:
        """Until `what()` is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {why or what}")

    def wait_messages(self, chat_id: int, count: int, timeout_s: float = 60) -> list[Sent]:
        return self.wait_for(
            lambda: (found := self.messages(chat_id)) and len(found) >= count and found,
            timeout_s,
            f"{count} messages in chat {chat_id} (have {self.messages(chat_id)})",
        )

    # --- the bot's side ---------------------------------------------------------------------------

    async def _params(self, request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.body()
            return json.loads(body) if body else {}
        form = await request.form()
        params: dict[str, Any] = {}
        for key, value in form.items():
            params[key] = json.loads(value) if key in _JSON_FIELDS and isinstance(value, str) else value
        return {**dict(request.query_params), **params}

    async def _handle(self, request: Request) -> JSONResponse:
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.path_params["method"]
        params = await self._params(request)
        with self._lock:
            self.calls.append(method)
            self.hosts.add(request.headers.get("host", ""))
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        if method in ("sendMessage", "editMessageText", "sendChatAction"):
            refused = self._flood_control(method, int(params.get("chat_id", 0)))
            if refused is not None:
                return refused
        failed = self._failure(method, params)
        if failed is not None:
            return failed
        result = handler(params)
        if asyncio.iscoroutine(result):
            result = await result
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse({"ok": True, "result": result})

    def _failure(self, method: str, params: dict[str, Any]) -> JSONResponse | None:
        with self._lock:
            for index, (failing, status, description, deletes) in enumerate(self._failures):
                if failing == method:
                    del self._failures[index]
                    if deletes:
                        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
                        self.sent = [
                            m for m in self.sent if (m.chat_id, m.message_id) != (chat_id, message_id)
                        ]
                    return _error(status, description)
        return None

    def _flood_control(self, method: str, chat_id: int) -> JSONResponse | None:
        now = time.monotonic()
        with self._lock:
            until = self._blocked_until.get(chat_id, 0.0)
            if now < until:
                self.violations += 1
                return _too_many(max(1, round(until - now)))
            for flood in self._floods:
                if flood.method == method and flood.times > 0:
                    flood.times -= 1
                    self.too_many += 1
                    self._blocked_until[chat_id] = now + flood.retry_after
                    return _too_many(flood.retry_after)
        return None

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "GenAI",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._bot_user()

    def _m_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = (str(params["url"]), str(params.get("secret_token", "")))
        return True

    async def _m_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                # Like Telegram: an offset confirms every update before it.
                self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = list(self.updates[:100])
            if ready or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(0.05)

    def _check_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | JSONResponse:
        text = str(params.get("text", ""))
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(text) > LIMIT:
            return _error(400, "Bad Request: message is too long")
        entities = params.get("entities") or []
        size = utf16_len(text)
        for entity in entities:
            if entity["offset"] < 0 or entity["length"] <= 0 or entity["offset"] + entity["length"] > size:
                return _error(400, "Bad Request: can't parse entities: entity beyond the end of the text")
        return text, entities

    def _message(self, sent: Sent) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": sent.message_id,
            "from": self._bot_user(),
            "chat": {"id": sent.chat_id, "type": self._chat_types.get(sent.chat_id, "private")},
            "date": int(time.time()),
            "text": sent.text,
        }
        if sent.entities:
            message["entities"] = sent.entities
        if sent.reply_markup:
            message["reply_markup"] = sent.reply_markup
        return message

    def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        checked = self._check_text(params)
        if isinstance(checked, JSONResponse):
            return checked
        text, entities = checked
        chat_id = int(params["chat_id"])
        with self._lock:
            sent = Sent(chat_id, next(self._message_ids), text, entities, params.get("reply_markup"))
            self.sent.append(sent)
        return self._message(sent)

    def _m_editMessageText(self, params: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        checked = self._check_text(params)
        if isinstance(checked, JSONResponse):
            return checked
        text, entities = checked
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        with self._lock:
            found = [m for m in self.sent if m.chat_id == chat_id and m.message_id == message_id]
            if not found:
                return _error(400, "Bad Request: message to edit not found")
            sent = found[0]
            if sent.text == text and sent.entities == entities or self._not_modified:
                if self._not_modified:
                    # The same edit's first attempt landed (its answer was lost): the message shows it.
                    self._not_modified -= 1
                    sent.text, sent.entities, sent.edits = text, entities, sent.edits + 1
                self.not_modified += 1
                return _error(400, NOT_MODIFIED)
            sent.text, sent.entities, sent.edits = text, entities, sent.edits + 1
        return {**self._message(sent), "edit_date": int(time.time())}

    def _m_sendChatAction(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self.actions.append((int(params["chat_id"]), str(params["action"])))
        return True

    def _m_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        with self._lock:
            self.callback_answers.append(str(params["callback_query_id"]))
        return True


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status)


def _too_many(retry_after: int) -> JSONResponse:
    return _error(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
