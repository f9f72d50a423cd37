"""The Telegram bot end to end: the real bot process (python-telegram-bot) against the fake Bot API, acting
through nginx and the gateway of a real stack for each linked user.

Two stacks: the shared one on llama.cpp (the real model) for linking, answers, history, cache, limits and
refusals; one of this module's own on the vLLM simulator, whose answers can be 2,000 words long, for splitting,
Telegram's flood control and the gateway going away.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from genai_devstack import infra
from genai_telegram.render import render
from tests.conftest import _own_database
from tests.fake_bot_api import LIMIT, FakeBotApi, Sent, TelegramUser, utf16_len
from tests.harness import ARTIFACTS, RunningStack, User, launch

pytestmark = pytest.mark.slow


class Bot:
    """The bot as a process of its own, on the fake Bot API and a stack's public HTTPS address."""

    def __init__(
        self, stack: RunningStack, api: FakeBotApi, work: Path, ready: str = "getUpdates", **settings: str
    ) -> None:
        self.stack, self.api = stack, api
        self.store = work / "bot.sqlite3"
        self.port = infra.free_port()
        self.env = {
            **os.environ,
            "GENAI_TELEGRAM_BOT_TOKEN": api.token,
            "GENAI_TELEGRAM_STORE_KEY": secrets.token_urlsafe(32),
            "GENAI_TELEGRAM_STORE_PATH": str(self.store),
            "GENAI_TELEGRAM_GATEWAY_URL": stack.base_url,
            "GENAI_TELEGRAM_GATEWAY_CA_FILE": stack.ca,
            "GENAI_TELEGRAM_BOT_API_BASE_URL": api.url,
            "GENAI_TELEGRAM_POLL_TIMEOUT_S": "1",
            "GENAI_TELEGRAM_EDIT_INTERVAL_S": "0.05",
            "GENAI_TELEGRAM_PORT": str(self.port),
            **{f"GENAI_TELEGRAM_{key.upper()}": value for key, value in settings.items()},
        }
        log_dir = ARTIFACTS / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(log_dir / f"telegram-bot-{api.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genai_telegram"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api.wait_for(
            lambda: ready in api.calls or self.proc.poll() is not None, 60, f"the bot to call {ready}"
        )
        assert self.proc.poll() is None, f"the bot exited; see {self.log.name}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _fake(token_id: int) -> Iterator[FakeBotApi]:
    api = FakeBotApi(token=f"{token_id}:{secrets.token_urlsafe(30)}")
    api.start()
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture(scope="module")
def api() -> Iterator[FakeBotApi]:
    yield from _fake(7000001)


@pytest.fixture(scope="module")
def bot(live: RunningStack, api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    running = Bot(live, api, tmp_path_factory.mktemp("bot"), max_tokens="24")
    try:
        yield running
    finally:
        running.stop()


_people = iter(range(5_000_001, 6_000_000))


def person(language_code: str = "en") -> TelegramUser:
    number = next(_people)
    return TelegramUser(number, f"Person{number}", f"person{number}", language_code)


def code_for(stack: RunningStack, user: User) -> dict[str, Any]:
    with stack.client() as client:
        made = client.post("/api/v1/telegram/codes", headers=user.headers)
    assert made.status_code == 201, made.text
    return dict(made.json())


def link(bot: Bot, user: User, who: TelegramUser, command: str = "/start") -> None:
    reply = say(bot, who, f"{command} {code_for(bot.stack, user)['code']}")
    assert reply.text.startswith(f"Linked to {user.username}."), reply.text


def say(bot: Bot, who: TelegramUser, text: str, chat_id: int | None = None) -> Sent:
    """Send `text`; the one message the bot answers with (a reply that is not streamed)."""
    chat = who.id if chat_id is None else chat_id
    before = len(bot.api.messages(chat))
    bot.api.send_text(who, text, chat_id=chat_id, chat_type="private" if chat_id is None else "group")
    return bot.api.wait_messages(chat, before + 1)[before]


def answer(bot: Bot, user: User, who: TelegramUser, question: str, stored: int) -> list[Sent]:
    """Send a question; the messages that carry its answer once they show all of it: the answer as the
    gateway stored it in the user's history (then `stored` messages in all), word for word."""
    before = len(bot.api.messages(who.id))
    bot.api.send_text(who, question)
    stored_messages = [m for c in history(bot.stack, user, stored) for m in c["messages"]]
    response = max((m for m in stored_messages if m["prompt"] == question), key=lambda m: m["created_at_ms"])[
        "response"
    ]
    words = render(response.strip()).text.split()
    return bot.api.wait_for(
        lambda: (
            (sent := bot.api.messages(who.id)[before:])
            and [w for m in sent for w in m.text.split()] == words
            and sent
        ),
        60,
        f"the answer to {question!r} in Telegram",
    )


def history(stack: RunningStack, user: User, messages: int | None = None) -> list[dict[str, Any]]:
    """The user's chat conversations with their messages, as the web page reads them; with `messages`, once
    that many are stored (the gateway records an exchange after the answer has gone out)."""
    deadline = time.monotonic() + 20
    while True:
        found = _history(stack, user)
        if (
            messages is None
            or sum(len(c["messages"]) for c in found) >= messages
            or time.monotonic() > deadline
        ):
            return found
        time.sleep(0.1)


def _history(stack: RunningStack, user: User) -> list[dict[str, Any]]:
    with stack.client() as client:
        listed = client.get("/api/v1/history", params={"origin": "chat", "limit": 50}, headers=user.headers)
        listed.raise_for_status()
        return [
            client.get(f"/api/v1/history/{c['id']}", headers=user.headers).json()
            for c in listed.json()["conversations"]
        ]


def answered_asks(stack: RunningStack) -> float:
    """POST /ask requests the gateway answered with 200, from its own metrics."""
    return sum(
        value
        for (name, labels), value in stack.metrics("gateway").items()
        if name == "genai_http_requests_total"
        and dict(labels).get("route") == "/ask"
        and dict(labels).get("status") == "200"
    )


# --- linking -------------------------------------------------------------------------------------------


def test_a_code_from_the_web_page_links_and_a_wrong_reused_or_expired_one_does_not(bot: Bot) -> None:
    alice = bot.stack.new_user()
    made = code_for(bot.stack, alice)
    assert re.fullmatch(r"[A-Z2-9]{12}", made["code"]) and made["command"] == f"/start {made['code']}"
    phone = person()
    bot.api.send_text(phone, f"/start {made['code']}")
    assert bot.api.wait_messages(phone.id, 1)[0].text.startswith(f"Linked to {alice.username}.")
    with bot.stack.client() as client:
        links = client.get("/api/v1/telegram/links", headers=alice.headers).json()["links"]
    assert [(x["telegram_user_id"], x["telegram_username"], x["revoked"]) for x in links] == [
        (phone.id, phone.username, False)
    ]

    # Reused (by someone else), wrong, and expired codes link nothing.
    stranger = person()
    bot.api.send_text(stranger, f"/link {made['code']}")
    bot.api.send_text(stranger, "/link ABCDEFGHJKMN")
    expired = code_for(bot.stack, alice)["code"]
    asyncio.run(_expire_codes(bot.stack, alice))
    bot.api.send_text(stranger, f"/link {expired}")
    replies = bot.api.wait_messages(stranger.id, 3)
    assert all(r.text.startswith("That code is wrong, already used or expired") for r in replies), replies
    with bot.stack.client() as client:
        links = client.get("/api/v1/telegram/links", headers=alice.headers).json()["links"]
        assert len(links) == 1
        # The same over HTTP: a 400 with a message, and the code is single-use.
        again = client.post(
            "/api/v1/telegram/links", json={"code": made["code"], "telegram_user_id": stranger.id}
        )
    assert again.status_code == 400 and "wrong, already used or expired" in again.json()["detail"]


def test_an_account_linked_to_another_user_ends_its_earlier_link_and_nobody_else_can_end_it(bot: Bot) -> None:
    alice, bob, mallory = bot.stack.new_user(), bot.stack.new_user(), bot.stack.new_user()
    phone = person()
    link(bot, alice, phone)
    # Mallory redeems a code of her own by hand with the account's Telegram id: Alice's link stays.
    with bot.stack.client() as client:
        made = client.post(
            "/api/v1/telegram/links",
            json={"code": code_for(bot.stack, mallory)["code"], "telegram_user_id": phone.id},
        )
        assert made.status_code == 201, made.text
        alices = client.get("/api/v1/telegram/links", headers=alice.headers).json()["links"]
        assert [x["revoked"] for x in alices] == [False]
    # The account's owner links it to Bob through the bot: the bot ends the link to Alice.
    link(bot, bob, phone)
    with bot.stack.client() as client:
        alices = client.get(
            "/api/v1/telegram/links", params={"include_revoked": True}, headers=alice.headers
        ).json()["links"]
        bobs = client.get("/api/v1/telegram/links", headers=bob.headers).json()["links"]
    assert [x["revoked"] for x in alices] == [True] and [x["revoked"] for x in bobs] == [False]


async def _expire_codes(stack: RunningStack, user: User) -> None:
    """Time passing for the user's codes: the test moves their expiry into the past."""
    conn = await asyncpg.connect(stack.cfg.database_url)
    try:
        await conn.execute(
            "UPDATE genai_auth.telegram_link_codes SET expires_at = now() - interval '1 second' WHERE user_id = $1",
            uuid.UUID(user.id),
        )
    finally:
        await conn.close()


def test_the_chat_key_can_only_chat_and_the_bot_keeps_no_key_in_clear(bot: Bot) -> None:
    carol = bot.stack.new_user()
    link(bot, carol, person())
    with bot.stack.client() as client:
        redeemed = client.post(
            "/api/v1/telegram/links",
            json={
                "code": code_for(bot.stack, carol)["code"],
                "telegram_user_id": 4242,
                "telegram_username": "c",
            },
        )
        assert redeemed.status_code == 201, redeemed.text
        key = {"Authorization": f"Bearer {redeemed.json()['api_key']}"}
        assert client.get("/api/v1/me", headers=key).json()["username"] == carol.username
        assert client.get("/api/v1/history", headers=key).status_code == 200
        for method, path in [
            ("GET", "/api/v1/keys"),
            ("POST", "/api/v1/telegram/codes"),
            ("GET", "/api/v1/telegram/links"),
            ("GET", "/api/v1/users"),
        ]:
            refused = client.request(method, path, headers=key)
            assert refused.status_code == 403, (path, refused.text)
            assert "may only chat" in refused.json()["detail"]
        listed = client.get("/api/v1/keys", headers=carol.headers).json()["keys"]
        assert [k["scope"] for k in listed] == ["chat", "chat"]
        # Not her other link (the phone's): that one is ended by its own key, the web page or an admin.
        links = client.get("/api/v1/telegram/links", headers=carol.headers).json()["links"]
        (other,) = [x["id"] for x in links if x["id"] != redeemed.json()["link"]["id"]]
        assert client.delete(f"/api/v1/telegram/links/{other}", headers=key).status_code == 404
        # The key's own link can be ended with it (the bot's /unlink), and then it is dead.
        link_id = redeemed.json()["link"]["id"]
        assert client.delete(f"/api/v1/telegram/links/{link_id}", headers=key).status_code == 200
        assert client.get("/api/v1/me", headers=key).status_code == 401
    # The bot's store holds its keys encrypted.
    raw = bot.store.read_bytes() + b"".join(
        p.read_bytes() for p in bot.store.parent.glob("bot.sqlite3*") if p != bot.store
    )
    rows = sqlite3.connect(bot.store).execute("SELECT count(*) FROM links").fetchone()[0]
    assert rows >= 1 and b"gk-" not in raw


# --- answers -------------------------------------------------------------------------------------------


def test_a_linked_users_question_is_streamed_stored_and_cached_for_another_user(bot: Bot) -> None:
    alice, bob = bot.stack.new_user(), bot.stack.new_user()
    alice_phone, bob_phone = person(), person()
    link(bot, alice, alice_phone)
    link(bot, bob, bob_phone)
    question = f"Name three colours of the rainbow ({uuid.uuid4().hex[:6]})."
    actions_before = len(bot.api.actions)

    (reply,) = answer(bot, alice, alice_phone, question, stored=1)
    assert (alice_phone.id, "typing") in bot.api.actions[actions_before:]
    assert reply.edits >= 1, "the answer was not streamed by edits"
    (conversation,) = history(bot.stack, alice)
    (message,) = conversation["messages"]
    assert message["source"] == "model" and conversation["origin"] == "chat"
    assert reply.text == render(message["response"].strip()).text

    print(f"\n> {question}\n< {reply.text}  ({reply.edits} edits)")
    (cached,) = answer(bot, bob, bob_phone, question, stored=1)
    (bob_conversation,) = history(bot.stack, bob)
    assert bob_conversation["messages"][0]["source"] == "cache"
    assert cached.text == reply.text


def test_new_and_history_switch_conversations_in_the_users_language(bot: Bot) -> None:
    dana = bot.stack.new_user()
    phone = person("ru")
    code = code_for(bot.stack, dana)["code"]
    assert say(bot, phone, f"/link {code}").text.startswith(f"Привязано к {dana.username}.")
    answer(bot, dana, phone, "First topic: apples.", stored=1)
    assert say(bot, phone, "/new").text == "Следующее сообщение начнёт новый диалог."
    # The same question in the new conversation (answered from the cache: no context differs).
    answer(bot, dana, phone, "First topic: apples.", stored=2)
    conversations = history(bot.stack, dana)
    assert [len(c["messages"]) for c in conversations] == [1, 1]
    first = conversations[-1]  # the older one

    listing = say(bot, phone, "/history")
    assert listing.text.startswith("Недавние диалоги")
    buttons = [row[0] for row in listing.reply_markup["inline_keyboard"]]
    assert len(buttons) == 2 and buttons[0]["text"].startswith("\u2022 ")  # the current one, newest
    target = next(b for b in buttons if b["callback_data"] == f"c:{first['id']}")
    before = len(bot.api.messages(phone.id))
    query = bot.api.press(phone, listing, target["callback_data"])
    switched = bot.api.wait_messages(phone.id, before + 1)[before]
    assert switched.text.startswith("Продолжаем") and query in bot.api.callback_answers
    answer(bot, dana, phone, "And pears?", stored=3)
    by_id = {c["id"]: c for c in history(bot.stack, dana)}
    assert [m["prompt"] for m in by_id[first["id"]]["messages"]] == ["First topic: apples.", "And pears?"]


def test_the_31st_message_in_a_minute_gets_the_limit_message(bot: Bot) -> None:
    erin = bot.stack.new_user()
    phone = person()
    link(bot, erin, phone)
    before = len(bot.api.messages(phone.id))
    # Each question in a new conversation: after the first, the answers come from the cache.
    for _ in range(31):
        bot.api.send_text(phone, "/new")
        bot.api.send_text(phone, "Say OK.")
    bot.api.wait_for(
        lambda: any("usage limit" in m.text for m in bot.api.messages(phone.id)[before:]),
        120,
        "the limit message",
    )
    assert sum(len(c["messages"]) for c in history(bot.stack, erin, 30)) == 30
    replies = [m for m in bot.api.messages(phone.id)[before:] if not m.text.startswith("A new conversation")]
    assert len(replies) == 31, [m.text for m in replies]
    assert re.fullmatch(r"You have reached your usage limit\. Please try again in \d+ s\.", replies[-1].text)
    assert not any("limit" in m.text or "unavailable" in m.text for m in replies[:-1])


# --- refusals ------------------------------------------------------------------------------------------


def test_unlinked_accounts_group_chats_and_ended_links_get_no_answer(bot: Bot) -> None:
    frank = bot.stack.new_user()
    admin = {"Authorization": f"Bearer {bot.stack.login(bot.stack.admin_username, bot.stack.admin_password)}"}
    phone, web_unlinked, self_unlinked, stranger = person(), person(), person(), person()
    for who in (phone, web_unlinked, self_unlinked):
        link(bot, frank, who)
    answer(bot, frank, phone, "Hello?", stored=1)
    answered = answered_asks(bot.stack)

    assert say(bot, stranger, "Hello?").text.startswith(
        "This Telegram account is not linked to the assistant yet."
    )
    group = say(bot, phone, "Hello, everyone?", chat_id=-100123)
    assert group.text == "I only answer in a private chat with you. Open a chat with me to ask."

    with bot.stack.client() as client:
        listed = client.get("/api/v1/admin/telegram/links", headers=admin).json()["links"]
        by_account = {x["telegram_user_id"]: x for x in listed if x["owner"] == frank.username}
        assert set(by_account) == {phone.id, web_unlinked.id, self_unlinked.id}
        # An admin revokes one link, the user unlinks another from the web page.
        revoked = client.delete(f"/api/v1/telegram/links/{by_account[phone.id]['id']}", headers=admin)
        assert revoked.json()["revoked"]
        unlinked = client.delete(
            f"/api/v1/telegram/links/{by_account[web_unlinked.id]['id']}", headers=frank.headers
        )
        assert unlinked.json()["revoked"]
    for who in (phone, web_unlinked):
        assert say(bot, who, "Still there?").text.startswith("This account's link was ended"), who
        assert say(bot, who, "Hello again?").text.startswith("This Telegram account is not linked")
    # The third unlinks from Telegram.
    assert (
        say(bot, self_unlinked, "/unlink").text
        == f"Unlinked. This account no longer acts for {frank.username}."
    )
    assert say(bot, self_unlinked, "Hello?").text.startswith("This Telegram account is not linked")
    assert answered_asks(bot.stack) == answered
    assert sum(len(c["messages"]) for c in history(bot.stack, frank)) == 1
    with bot.stack.client() as client:
        assert client.get("/api/v1/telegram/links", headers=frank.headers).json()["links"] == []
        listed = client.get("/api/v1/admin/telegram/links?include_revoked=true", headers=admin).json()[
            "links"
        ]
    assert sum(1 for x in listed if x["owner"] == frank.username and x["revoked"]) == 3


def test_the_web_page_links_and_unlinks_and_the_admin_console_revokes(bot: Bot) -> None:
    from tests import test_browser as page_tests  # skips where Chromium is not installed

    expect = page_tests.expect
    user, own_phone, work_phone = bot.stack.new_user(), person(), person()
    with page_tests.sync_api.sync_playwright() as playwright:
        browser = page_tests.launch_for(playwright, bot.stack)
        try:
            watch = page_tests.PageWatch(bot.stack.base_url)
            page = watch.attach(browser.new_context(base_url=bot.stack.base_url, locale="en-US").new_page())
            page_tests.log_in(page, user.username, user.password)
            page.click("#telegram-panel summary")
            expect(page.locator("#telegram-none")).to_have_text("No Telegram account is linked.")
            command, shown = page.locator(".telegram-command"), ""
            for phone in (own_phone, work_phone):
                page.click("#telegram-code-button")
                expect(command).to_have_text(re.compile(r"/start [A-Z2-9]{12}"))
                expect(command).not_to_have_text(shown)  # a new code each time
                shown = str(command.text_content())
                reply = say(bot, phone, shown)
                assert reply.text.startswith(f"Linked to {user.username}.")
            page.click("#telegram-panel summary")
            page.click("#telegram-panel summary")  # opened again: the list is read anew
            linked = page.locator("#telegram-links li")
            expect(linked).to_have_count(2)
            linked.filter(has_text=f"@{own_phone.username}").get_by_role("button", name="Unlink").click()
            expect(linked).to_have_count(1)
            expect(linked).to_contain_text(f"@{work_phone.username}")

            admin = watch.attach(browser.new_context(base_url=bot.stack.base_url, locale="en-US").new_page())
            page_tests.log_in(admin, bot.stack.admin_username, bot.stack.admin_password)
            admin.goto("/static/admin.html#telegram")
            row = admin.locator("#telegram-table tbody tr", has_text=user.username)
            expect(row).to_have_count(1)
            expect(row).to_contain_text(f"@{work_phone.username}")
            row.get_by_role("button", name="Revoke").click()
            expect(row).to_have_count(0)
            watch.check()
        finally:
            browser.close()
    for phone in (own_phone, work_phone):
        assert say(bot, phone, "Hello?").text.startswith("This account's link was ended")


def test_webhook_mode_takes_the_updates_telegram_posts_with_the_secret(
    live: RunningStack, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    for api in _fake(7000003):
        hook = Bot(
            live,
            api,
            tmp_path,
            ready="setWebhook",
            mode="webhook",
            webhook_url="https://bot.corp.example/telegram",
            webhook_secret=secret,
        )
        try:
            assert api.webhook == ("https://bot.corp.example/telegram", secret)
            stranger = person("ru")
            update = {
                "update_id": 1,
                "message": {
                    "message_id": 1,
                    "from": stranger.as_dict(),
                    "chat": {"id": stranger.id, "type": "private", "first_name": stranger.first_name},
                    "date": int(time.time()),
                    "text": "Привет",
                },
            }
            url = f"http://127.0.0.1:{hook.port}/telegram"
            wrong = httpx.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"})
            assert wrong.status_code == 403
            right = httpx.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret})
            assert right.status_code == 200
            reply = api.wait_messages(stranger.id, 1)
            assert len(reply) == 1 and reply[0].text.startswith("Этот аккаунт Telegram ещё не привязан")
            assert httpx.get(f"http://127.0.0.1:{hook.port}/health").json() == {"status": "ok"}
        finally:
            hook.stop()


def test_in_groups_a_sender_who_stands_for_someone_unknown_is_not_served(
    live: RunningStack, tmp_path: Path
) -> None:
    """With groups allowed, an anonymous admin (Telegram sends every one of them as GroupAnonymousBot) would
    share whichever account one of them linked: the bot serves nobody behind such an id."""
    for api in _fake(7000005):
        grouped = Bot(live, api, tmp_path, allow_groups="true")
        try:
            anonymous = TelegramUser(1087968824, "Group", "GroupAnonymousBot", "en")
            for said in ("/link ABCD-EFGH-JKLM", "Hello?"):
                reply = say(grouped, anonymous, said, chat_id=-100777)
                assert reply.text.startswith("I cannot tell who sends this"), reply.text
            # A person in the same group is served as themselves.
            reply = say(grouped, person(), "Hello?", chat_id=-100777)
            assert reply.text.startswith("This Telegram account is not linked"), reply.text
        finally:
            grouped.stop()


def test_health_says_when_the_bot_hears_nothing_from_telegram(live: RunningStack, tmp_path: Path) -> None:
    """Every poll refused (409: a second bot polls with the same token): the bot takes no update, and its
    /health says so until the polls are answered again."""
    for api in _fake(7000007):
        deaf = Bot(live, api, tmp_path, bot_api_timeout_s="2")  # deaf after 2 polls of 1 s and 2 s more
        health = f"http://127.0.0.1:{deaf.port}/health"
        try:
            assert httpx.get(health).json() == {"status": "ok"}
            api.fail("getUpdates", 409, "Conflict: terminated by other getUpdates request", times=10_000)
            refused = api.wait_for(
                lambda url=health: httpx.get(url).status_code == 503, 60, "/health to turn 503"
            )
            assert refused
            assert "not hearing Telegram" in httpx.get(health).json()["status"]
            api.recover("getUpdates")
            api.wait_for(lambda url=health: httpx.get(url).status_code == 200, 60, "/health to turn 200")
        finally:
            deaf.stop()


def test_the_bot_api_is_reached_through_the_sites_proxy(live: RunningStack, tmp_path: Path) -> None:
    # The Bot API's host does not resolve here: only a request sent through the proxy (this fake, which
    # also takes absolute-form requests as a forward proxy does) can reach it.
    for api in _fake(7000004):
        proxied = Bot(live, api, tmp_path, bot_api_base_url="http://api.telegram.invalid", proxy_url=api.url)
        try:
            assert say(proxied, person(), "/start").text.startswith("This Telegram account is not linked")
            assert api.hosts == {"api.telegram.invalid"}
        finally:
            proxied.stop()


# --- long answers, flood control and outages (the simulator's stack) ---------------------------------------


@pytest.fixture(scope="module")
def long_stack(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[RunningStack]:
    with _own_database(postgres_server) as database:
        running = launch(
            work_dir,
            database,
            redis_url.rsplit("/", 1)[0] + "/3",
            upstream="sim",
            upstream_args=["--itl-ms", "1", "--output-tokens", "2000"],
            name="telegram-stack",
        )
        try:
            yield running
        finally:
            running.stop_all()


@pytest.fixture(scope="module")
def long_api() -> Iterator[FakeBotApi]:
    yield from _fake(7000002)


@pytest.fixture(scope="module")
def long_bot(
    long_stack: RunningStack, long_api: FakeBotApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bot]:
    running = Bot(
        long_stack,
        long_api,
        tmp_path_factory.mktemp("long-bot"),
        max_tokens="2000",
        max_pending_questions="3",
    )
    try:
        yield running
    finally:
        running.stop()


def test_a_long_answer_is_split_between_words_and_flood_control_is_honoured(long_bot: Bot) -> None:
    gina = long_bot.stack.new_user()
    phone = person()
    link(long_bot, gina, phone)
    # Telegram's flood control strikes twice: on the answer's first message, and on an edit while streaming.
    long_bot.api.flood("editMessageText", retry_after=1)
    long_bot.api.flood("sendMessage", retry_after=1)
    # And one edit is answered "message is not modified" (taken as done; later edits bring the text).
    long_bot.api.already_shown()
    parts = answer(long_bot, gina, phone, "Write a long story.", stored=1)
    (conversation,) = history(long_bot.stack, gina)
    full = conversation["messages"][0]["response"]
    assert len(full) >= 10_000
    assert len(parts) >= 3 and all(utf16_len(p.text) <= LIMIT for p in parts)
    # Every word whole, in order, nothing lost or repeated.
    assert [w for p in parts for w in p.text.split()] == full.split()
    assert long_bot.api.too_many == 2 and long_bot.api.violations == 0 and long_bot.api.not_modified == 1
    print(
        "\nlong answer:", len(full), "characters in", len(parts), "messages of", [len(p.text) for p in parts]
    )


def test_telegram_failing_while_an_answer_streams_costs_no_part_of_it(long_bot: Bot) -> None:
    """The site's proxy answers 502 to edits and to the answer's first message, and the user deletes the
    half-written message: the answer still arrives whole in Telegram, is stored whole, and the next question
    continues its conversation."""
    ida = long_bot.stack.new_user()
    phone = person()
    link(long_bot, ida, phone)
    long_bot.api.fail("sendMessage", 502, "Bad Gateway", times=2)
    long_bot.api.fail("editMessageText", 502, "Bad Gateway", times=3)
    long_bot.api.delete_before_next_edit()
    parts = answer(long_bot, ida, phone, "Write a long story.", stored=1)
    assert len(parts) >= 2 and all(utf16_len(p.text) <= LIMIT for p in parts)
    answer(long_bot, ida, phone, "And then?", stored=2)
    assert [len(c["messages"]) for c in history(long_bot.stack, ida)] == [2]
    assert long_bot.proc.poll() is None


def test_a_burst_of_questions_from_one_account_waits_three_deep_and_the_rest_are_declined(
    long_bot: Bot,
) -> None:
    """Five questions at once, to a bot that keeps three (GENAI_TELEGRAM_MAX_PENDING_QUESTIONS): three are
    answered in turn (each takes a while), two are declined with a word at once, so that one account cannot
    hold the bot's hands while everyone else waits."""
    jan = long_bot.stack.new_user()
    phone = person()
    link(long_bot, jan, phone)
    before = len(long_bot.api.messages(phone.id))
    questions = [f"Story number {n} of five, please." for n in range(5)]
    for question in questions:
        long_bot.api.send_text(phone, question)
    long_bot.api.wait_for(
        lambda: sum(len(c["messages"]) for c in _history(long_bot.stack, jan)) >= 3,
        180,
        "three answers stored",
    )
    stored = [m["prompt"] for c in _history(long_bot.stack, jan) for m in c["messages"]]
    assert sorted(stored) == questions[:3]
    declined = [
        m for m in long_bot.api.messages(phone.id)[before:] if m.text.startswith("I am still answering")
    ]
    assert len(declined) == 2


def test_a_bot_stopping_mid_answer_ends_it_with_a_note_instead_of_being_killed(
    long_stack: RunningStack, tmp_path: Path
) -> None:
    """Compose gives the bot 30 s to stop, then kills it: answers still being written after
    GENAI_TELEGRAM_STOP_GRACE_S (none here) end with a note saying why, and the bot exits on its own."""
    for api in _fake(7000006):
        stopping = Bot(long_stack, api, tmp_path, max_tokens="2000", stop_grace_s="0")
        kate = long_stack.new_user()
        phone = person()
        link(stopping, kate, phone)
        before = len(api.messages(phone.id))
        # A question of its own: an answer from the cache would be shown whole at once.
        api.send_text(phone, f"Write a long story about restarts, number {uuid.uuid4().hex}.")
        first = api.wait_for(
            lambda fake=api, chat=phone.id, since=before: fake.messages(chat)[since:], 60, "a first message"
        )
        assert "cut short" not in first[0].text
        stopping.proc.send_signal(signal.SIGTERM)
        assert stopping.proc.wait(30) == 0
        stopping.log.close()
        shown = " ".join(m.text for m in api.messages(phone.id)[before:])
        assert shown.endswith(
            "(The answer was cut short: the assistant is restarting; please ask again in a minute)"
        ), shown[-200:]


def test_the_bot_survives_the_gateway_being_down(long_bot: Bot) -> None:
    hana = long_bot.stack.new_user()
    phone = person()
    link(long_bot, hana, phone)
    long_bot.stack.stop("gateway")
    try:
        reply = say(long_bot, phone, "Are you there?")
        assert reply.text == "The assistant is unavailable right now. Please try again in a minute."
    finally:
        long_bot.stack.start("gateway")
        long_bot.stack.wait_healthy()
    assert long_bot.proc.poll() is None
    parts = answer(long_bot, hana, phone, "Are you back?", stored=1)
    assert len(" ".join(m.text for m in parts).split()) > 100
    assert [len(c["messages"]) for c in history(long_bot.stack, hana)] == [1]
