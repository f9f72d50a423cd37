"""The web chat and the admin console in a real browser: Debian's Chromium, driven by Playwright.

The pages are loaded through nginx over HTTPS from the real stack (the vLLM simulator streams 20 words,
50 ms apart, so tokens can be watched arriving and a generation stopped midway). Screenshots land in
test-artifacts/screenshots/ and axe-core's findings in test-artifacts/axe/.

TLS is checked, not ignored. Chromium on Linux takes its trust anchors from an NSS database, not from
a CA file, so the stack's own CA (tests/harness.py) cannot simply be passed to it; instead the browser is
started with --ignore-certificate-errors-spki-list set to the SHA-256 of the stack's server certificate's
public key. That accepts exactly this one key (a pin), unlike ignore_https_errors, which would accept any
certificate at all; test_tls_is_checked proves that a browser without the pin refuses the site.

Needs /usr/bin/chromium (apt-get install chromium; .ci/run installs it) and the `playwright` Python
package; `playwright install` (a browser download) is never used. axe-core and markdown-it come from
tests/package.json and its lock file (`npm ci --prefix tests`, run here when tests/node_modules lacks them).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness import ARTIFACTS, RunningStack, wait_for

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's Chromium is not installed (/usr/bin/chromium): apt-get install chromium",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing: pip install -r requirements-dev.txt"
)
from pypdf import PdfReader  # noqa: E402

expect = sync_api.expect
Page = sync_api.Page
BrowserContext = sync_api.BrowserContext

TESTS_DIR = Path(__file__).resolve().parent
SCREENSHOTS = ARTIFACTS / "screenshots"
AXE_REPORTS = ARTIFACTS / "axe"
AXE_JS = TESTS_DIR / "node_modules" / "axe-core" / "axe.min.js"
MARKDOWN_IT_JS = TESTS_DIR / "node_modules" / "markdown-it" / "dist" / "markdown-it.min.js"
VENDORED_MARKDOWN_IT = (
    TESTS_DIR.parent / "services/gateway/src/genai_gateway/static/vendor/markdown-it.min.js"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The simulator writes a word per token; the harness caps answers at 16 tokens
# (GENAI_GATEWAY_DEFAULT_MAX_TOKENS), 50 ms apart.
SIM_WORDS = 16
WAIT_MS = 20_000
# The inference adapter's generations at once (GENAI_ADAPTER_MAX_CONCURRENT's default); more wait in its queue.
ADAPTER_SLOTS = 16

expect.set_options(timeout=WAIT_MS)


def spki_pin(cert_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM file: Chromium's pin form."""
    cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def playwright() -> Iterator[Any]:
    # Per test, and requested after the stack fixtures: Playwright's sync API keeps an asyncio loop
    # running in this thread, and the stacks' setup (asyncio.run) refuses to start inside one.
    with sync_api.sync_playwright() as pw:
        yield pw


def launch_for(playwright: Any, stack: RunningStack) -> Any:
    """Chromium that accepts the stack's server key (and, as any browser, no other self-made certificate)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki_pin(stack.cfg.tls.cert)}"],
    )


@pytest.fixture
def browser(sim_stack: RunningStack, playwright: Any) -> Iterator[Any]:
    launched = launch_for(playwright, sim_stack)
    yield launched
    launched.close()


class PageWatch:
    """What a page did that it must not: uncaught errors, CSP violations, requests to other sites."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.errors: list[str] = []
        self.csp: list[str] = []
        self.foreign: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page: Page) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: self.csp.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        page.on(
            "request",
            lambda req: (
                None
                if req.url.startswith((self.base_url, "blob:", "data:"))
                else self.foreign.append(req.url)
            ),
        )

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        return page

    def check(self) -> None:
        assert self.errors == [], f"uncaught errors in the page: {self.errors}"
        assert self.csp == [], f"the page broke its Content Security Policy: {self.csp}"
        assert self.foreign == [], f"requests to other sites: {self.foreign}"
        assert self.dialogs == [], f"dialogs opened: {self.dialogs}"


@pytest.fixture
def new_page(browser: Any, sim_stack: RunningStack) -> Iterator[Callable[..., Page]]:
    """Pages in fresh browser contexts (own sessionStorage, as separate tabs of separate people)."""
    contexts: list[BrowserContext] = []
    watches: list[PageWatch] = []

    def make(*, locale: str = "ru-RU", phone: bool = False) -> Page:
        options: dict[str, Any] = {
            "base_url": sim_stack.base_url,
            "locale": locale,
            "accept_downloads": True,
            "viewport": PHONE if phone else DESKTOP,
        }
        if phone:
            options.update(is_mobile=True, has_touch=True, device_scale_factor=2)
        context = browser.new_context(**options)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=sim_stack.base_url)
        contexts.append(context)
        watch = PageWatch(sim_stack.base_url)
        watches.append(watch)
        return watch.attach(context.new_page())

    yield make
    for context in contexts:
        context.close()
    for watch in watches:
        watch.check()


# --- helpers ----------------------------------------------------------------------------------------


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-button")
    expect(page.locator("#chat-view")).to_be_visible()
    expect(page.locator("#whoami")).to_contain_text(username)


def ask(page: Page, prompt: str, *, enter: bool = False) -> None:
    page.fill("#prompt", prompt)
    if enter:
        page.press("#prompt", "Enter")
    else:
        page.click("#send")


def last_answer(page: Page) -> Any:
    return page.locator("#messages .msg.assistant").last


def wait_answered(page: Page) -> str:
    expect(page.locator("#messages .msg.assistant.pending")).to_have_count(0)
    expect(page.locator("#send")).to_be_enabled()
    return last_answer(page).locator(".answer").inner_text()


def download(page: Page, selector: str) -> tuple[str, bytes]:
    with page.expect_download() as info:
        page.click(selector)
    done = info.value
    path = done.path()
    assert path is not None, done.failure()
    return done.suggested_filename, Path(path).read_bytes()


def pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)


def stored_session(page: Page) -> dict[str, Any]:
    return dict(page.evaluate("() => JSON.parse(sessionStorage.getItem('genai.session'))"))


def patch_session(page: Page, **fields: Any) -> None:
    page.evaluate(
        """(fields) => {
            const s = JSON.parse(sessionStorage.getItem('genai.session'));
            for (const [key, value] of Object.entries(fields)) {
                s[key] = key === 'expires_at' ? Date.now() + value : value;
            }
            sessionStorage.setItem('genai.session', JSON.stringify(s));
        }""",
        fields,
    )


# --- TLS ----------------------------------------------------------------------------------------------


def test_tls_is_checked(sim_stack: RunningStack, playwright: Any, browser: Any) -> None:
    # Without the pin the same Chromium refuses the stack's certificate: the pin is what lets it in.
    plain = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    try:
        page = plain.new_page()
        with pytest.raises(sync_api.Error, match="ERR_CERT"):
            page.goto(sim_stack.base_url)
    finally:
        plain.close()
    page = browser.new_page()
    try:
        assert page.goto(sim_stack.base_url).status == 200
    finally:
        page.close()


# --- the chat -------------------------------------------------------------------------------------------


def test_user_streams_stops_regenerates_finds_searches_and_exports(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user = sim_stack.new_user()
    tag = f"zq{uuid.uuid4().hex[:8]}"
    prompt = f"Привет! Расскажи про зиму {tag}"
    page = new_page()
    page.goto("/")
    expect(page.locator("#login-title")).to_have_text("Вход")  # Russian from navigator.language
    shot(page, "01-login-desktop")
    log_in(page, user.username, user.password)

    # Tokens arrive one by one: the answer's text grows over many snapshots, each extending the last.
    ask(page, prompt, enter=True)
    answer = last_answer(page).locator(".answer")
    snapshots: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pending = page.locator("#messages .msg.assistant.pending").count() > 0
        text = answer.inner_text()
        if text and (not snapshots or text != snapshots[-1]):
            snapshots.append(text)
            if len(snapshots) == 4:
                shot(page, "02-streaming-desktop")
        if not pending:
            break
        time.sleep(0.02)
    final = wait_answered(page)
    assert len(final.split()) == SIM_WORDS
    assert len(snapshots) >= 5, f"the answer did not grow in steps: {snapshots}"
    assert [len(s.split()) for s in snapshots] == sorted(len(s.split()) for s in snapshots)
    assert all(final.startswith(s.rstrip()) for s in snapshots), snapshots
    expect(last_answer(page).locator(".badge.cache")).to_be_hidden()
    expect(last_answer(page).locator(".meta")).to_contain_text("модель")
    first_id = page.evaluate("() => location.hash.slice(3)")
    assert re.fullmatch(r"[\w-]{8,64}", first_id), first_id
    expect(page.locator(f'#conversation-list [data-conversation-id="{first_id}"]')).to_contain_text(
        "Привет! Расскажи про зиму"
    )

    # The copy button puts the answer on the clipboard as it was written.
    last_answer(page).locator("button.copy").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == final

    # The same question in a new conversation comes from the cache, and says so.
    page.click("#new-chat")
    expect(page.locator("#chat-title")).to_have_text("Новый диалог")
    ask(page, prompt)
    assert wait_answered(page) == final
    expect(last_answer(page).locator(".badge.cache")).to_be_visible()
    expect(last_answer(page).locator(".badge.cache")).to_have_text("из кэша")
    shot(page, "03-from-cache-desktop")

    # Regenerate asks the model again, past the cache.
    started = sim_stack.sim_stats()["started"]
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as sent:
        page.click("#regenerate")
    assert sent.value.all_headers().get("cache-control") == "no-cache"
    assert json.loads(sent.value.post_data or "{}")["prompt"] == prompt
    wait_answered(page)
    expect(last_answer(page).locator(".badge.cache")).to_be_hidden()
    assert sim_stack.sim_stats()["started"] > started
    assert page.locator("#messages .msg.assistant").count() == 2

    # Stop: the answer stays as far as it got, and the generation is cancelled at the model server.
    cancelled = sim_stack.sim_stats()["cancelled"]
    page.click("#new-chat")
    stop_prompt = f"Остановись на полуслове {tag}"
    # The page itself presses Stop the moment the second word shows: no round trip to the test between
    # seeing the text and stopping, so a busy machine cannot let the whole answer through first.
    page.evaluate(
        """() => {
            const observer = new MutationObserver(() => {
                const answer = document.querySelector("#messages .msg.assistant.pending .answer");
                if (answer && answer.textContent.trim().split(/\\s+/).length >= 2) {
                    observer.disconnect();
                    document.getElementById("stop").click();
                }
            });
            observer.observe(document.getElementById("messages"), { childList: true, subtree: true });
        }"""
    )
    ask(page, stop_prompt)
    expect(page.locator("#stop")).to_be_hidden()
    partial = last_answer(page).locator(".answer").inner_text()
    assert 0 < len(partial.split()) < SIM_WORDS, partial
    expect(last_answer(page).locator(".meta")).to_contain_text("остановлено")
    wait_for(lambda: sim_stack.sim_stats()["cancelled"] > cancelled, what="the simulator saw the cancel")
    shot(page, "04-stopped-desktop")
    # What was shown is kept in history, in a conversation of its own.
    expect(page.locator("#conversation-list .conv-title", has_text="Остановись на полуслове")).to_have_count(
        1
    )

    # After a reload the session and the dialogs are still there.
    page.reload()
    expect(page.locator("#chat-view")).to_be_visible()
    first = page.locator(f'#conversation-list [data-conversation-id="{first_id}"]')
    expect(first).to_contain_text(f"Привет! Расскажи про зиму {tag}")
    first.click()
    expect(page.locator("#chat-title")).to_contain_text("Привет! Расскажи про зиму")
    expect(page.locator("#messages .msg.user")).to_have_count(1)
    expect(page.locator("#messages .msg.user .msg-body")).to_have_text(prompt)
    expect(last_answer(page).locator(".answer")).to_have_text(final)

    # Search finds it, with the match marked, and opens it.
    page.fill("#search-input", tag)
    page.press("#search-input", "Enter")
    hits = page.locator("#conversation-list .hit")
    expect(hits.first).to_be_visible()
    expect(page.locator("#list-title")).to_contain_text(tag)
    expect(
        page.locator(f'#conversation-list .hit [data-conversation-id="{first_id}"] mark').first
    ).to_have_text(tag)
    shot(page, "05-search-desktop")
    page.locator(f'#conversation-list .hit [data-conversation-id="{first_id}"]').first.click()
    expect(page.locator("#messages .msg.highlight")).to_have_count(1)
    page.click("#search-clear")
    expect(page.locator("#list-title")).to_have_text("Недавние")

    # Exports of this dialog: PDF with its Cyrillic text, CSV, and all dialogs as JSON.
    name, body = download(page, '[data-export-this="pdf"]')
    assert name.endswith(".pdf") and body.startswith(b"%PDF")
    text = pdf_text(body)
    assert "Привет! Расскажи про зиму" in text and tag in text, text[:500]
    name, body = download(page, '[data-export-this="csv"]')
    assert name.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert [(r["prompt"], r["response"]) for r in rows] == [(prompt, final)]
    name, body = download(page, '[data-export-all="json"]')
    assert name.endswith(".json")
    exported = json.loads(body)
    titles = [c["title"] for c in exported["conversations"]]
    assert len(titles) == 3 and any(t.startswith("Остановись") for t in titles), titles

    # Rename and delete, each through its dialog.
    page.click("#rename")
    page.fill("#modal-input", "Зимний разговор")
    page.click("#modal button:has-text('Сохранить')")
    expect(page.locator("#chat-title")).to_have_text("Зимний разговор")
    expect(page.locator(f'#conversation-list [data-conversation-id="{first_id}"]')).to_contain_text(
        "Зимний разговор"
    )
    stopped = page.locator("#conversation-list .conv", has_text="Остановись на полуслове")
    stopped.locator("button[aria-label^='Удалить']").click()
    expect(page.locator("#modal")).to_be_visible()
    expect(page.locator("#modal")).to_contain_text("Это действие нельзя отменить")
    page.click("#modal button:has-text('Удалить')")
    expect(stopped).to_have_count(0)
    expect(page.locator("#conversation-list .conv")).to_have_count(2)
    shot(page, "06-renamed-desktop")


def test_model_output_and_prompts_are_shown_as_text_never_as_html(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user = sim_stack.new_user()
    page = new_page()
    log_in(page, user.username, user.password)
    payload = "<img src=x onerror=alert(1)> <script>alert(2)</script>"
    prompt = f"Что это: {payload} [жми](javascript:alert%283%29) **жирный** {uuid.uuid4().hex[:6]}"
    ask(page, prompt)
    wait_answered(page)

    def check_rendered() -> None:
        body = page.locator("#messages .msg.user .msg-body").last
        expect(body).to_contain_text(payload)
        expect(body.locator("strong")).to_have_text("жирный")
        expect(body).to_contain_text("жми")
        for scope in ("#messages", "#conversation-list", "#chat-title"):
            assert page.locator(f"{scope} img, {scope} script, {scope} svg, {scope} iframe").count() == 0
        assert page.locator("a[href^='javascript' i]").count() == 0
        expect(page.locator("#chat-title")).to_contain_text("<img src=x")
        assert page.evaluate("() => document.scripts.length") == 1  # app.js, the module

    check_rendered()
    # The same text as history gives it back (the path every earlier answer takes).
    page.reload()
    expect(page.locator("#messages .msg.user")).to_have_count(1)
    check_rendered()

    # The renderer itself on an answer full of hostile markup, inside the live page.
    answer = "\n".join(
        [
            "# Ответ",
            "Вот: <img src=x onerror=alert(1)> и <script>alert(2)</script>.",
            "",
            "- пункт **жирный** и *курсив*",
            "- [документация](https://example.org/docs?a=1&b=2)",
            "- [плохая](javascript:alert(3)) [ещё](JaVaScRiPt:alert%284%29) [data](data:text/html,x)",
            "- [пробел](%20javascript:alert%285%29) [таб](java\tscript:alert%285%29) [vb](vbscript:msgbox)",
            "",
            "```html",
            "<script>alert(6)</script>",
            "<img src=x onerror=alert(7)>",
            "```",
            "",
            '<a href="javascript:alert(8)">клик</a> <svg onload=alert(9)></svg> <iframe src=x></iframe>',
            "`<b>код</b>` ![картинка](https://example.org/x.png)",
        ]
    )
    result = page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            // Shown where answers are, as one more assistant message.
            const message = document.createElement("div");
            message.className = "msg assistant";
            const box = document.createElement("div");
            box.className = "msg-body md";
            box.appendChild(renderMarkdown(text));
            message.appendChild(box);
            document.getElementById("messages").appendChild(message);
            message.scrollIntoView();
            await new Promise((resolve) => setTimeout(resolve, 300));
            const all = [...box.querySelectorAll("*")];
            return {
                tags: [...new Set(all.map((e) => e.tagName.toLowerCase()))],
                attributes: [...new Set(all.flatMap((e) => [...e.attributes].map((a) => a.name)))],
                links: [...box.querySelectorAll("a")].map((a) => [a.getAttribute("href"), a.rel, a.textContent]),
                code: [...box.querySelectorAll("pre code")].map((c) => c.textContent),
                inline: [...box.querySelectorAll(":not(pre) > code")].map((c) => c.textContent),
                text: box.textContent,
            };
        }""",
        answer,
    )
    assert set(result["tags"]) <= {"h3", "p", "br", "ul", "li", "strong", "em", "a", "pre", "code"}, result
    assert {"strong", "em", "ul", "pre", "a", "h3"} <= set(result["tags"])
    assert set(result["attributes"]) <= {"href", "rel", "target", "class", "data-language"}, result
    assert result["links"] == [
        ["https://example.org/docs?a=1&b=2", "noopener noreferrer nofollow", "документация"],
        ["https://example.org/x.png", "noopener noreferrer nofollow", "картинка"],
    ]
    assert result["code"] == ["<script>alert(6)</script>\n<img src=x onerror=alert(7)>"]
    assert result["inline"] == ["<b>код</b>"]
    for literal in (
        "<img src=x onerror=alert(1)>",
        "<script>alert(2)</script>",
        "плохая",
        "<svg onload=alert(9)>",
    ):
        assert literal in result["text"]
    page.wait_for_timeout(300)
    shot(page, "07-hostile-markup-as-text-desktop")
    # new_page's check: no dialog opened, no error, no CSP violation.


def test_the_vendored_markdown_parser_is_the_pinned_release(node_modules: Path) -> None:
    # The page serves its own copy (no build step, CSP unchanged); it must be the release that
    # tests/package.json pins and npm audit checks, byte for byte.
    assert VENDORED_MARKDOWN_IT.read_bytes() == MARKDOWN_IT_JS.read_bytes()


# Inputs that made the earlier hand-written renderer take cubic or quadratic time, each at the page's
# 16,000-character cap: a heading line padded with spaces, fences, runs of emphasis markers, brackets
# and backticks, deep quotes and lists.
_CAP = 16_000
PATHOLOGICAL = {
    "heading padded with spaces": "# a" + " " * (_CAP - 4) + "a",
    "unclosed fences": ("```x\n" + "~" * 3 + "\n") * (_CAP // 9),
    "emphasis markers": "*a" * (_CAP // 2),
    "underscores in words": "a_" * (_CAP // 2),
    "strong markers": "**" * (_CAP // 2),
    "open brackets": "[" * (_CAP - 10) + "](http://x)",
    "link openers": "[a](" * (_CAP // 4),
    "backtick runs": "".join("`" * (i % 7 + 1) + "a" for i in range(_CAP // 5)),
    "nested quotes": "> " * (_CAP // 2),
    "nested lists": "".join(" " * (2 * i % 40) + "- a\n" for i in range(_CAP // 24)),
    "a line of stars": "* " * (_CAP // 2),
}


def test_markdown_rendering_grows_linearly_on_hostile_input(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    page = new_page()
    page.goto("/")
    # A normal answer of the same length is the yardstick: a renderer that is linear on every input
    # takes about as long on each hostile one (the old one took ~0.9 s on the heading with 2,000 spaces,
    # minutes at the cap). Each figure is the median of several renders, in the same page, one after the other.
    normal_unit = (
        "## Шаги\n\nПроверьте **права** на файл: `ls -l script.sh`, затем *добавьте* бит выполнения.\n\n"
        "- первый пункт со [ссылкой](https://example.org/a)\n- второй пункт\n\n```sh\nchmod +x script.sh\n```\n\n"
    )
    normal = (normal_unit * (_CAP // len(normal_unit) + 1))[:_CAP]
    timings = page.evaluate(
        """async ({ cases, normal }) => {
            const { renderMarkdown } = await import("/static/markdown.js");
            const median = (text) => {
                const runs = [];
                for (let i = 0; i < 5; i += 1) {
                    const started = performance.now();
                    renderMarkdown(text);
                    runs.push(performance.now() - started);
                }
                return runs.sort((a, b) => a - b)[2];
            };
            median(normal); // warm up the parser
            const out = { normal: median(normal) };
            for (const [name, text] of Object.entries(cases)) out[name] = median(text);
            return out;
        }""",
        {"cases": PATHOLOGICAL, "normal": normal},
    )
    baseline = max(timings.pop("normal"), 1.0)
    ratios = {name: ms / baseline for name, ms in timings.items()}
    for name, ms in timings.items():
        print(f"markdown {name}: {ms:.1f} ms, {ratios[name]:.1f}x a normal answer of {_CAP} characters")
    print(f"markdown normal answer: {baseline:.1f} ms")
    # Generous bound: quadratic growth at this size is thousands of times a normal answer.
    assert max(ratios.values()) < 25, ratios


def test_waiting_for_the_model_shows_the_queue_position(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user, other = sim_stack.new_user(), sim_stack.new_user()
    page = new_page()
    log_in(page, user.username, user.password)
    # Everything the waiting answer said, recorded in the page as it happened.
    page.evaluate(
        """() => {
            window.queueTexts = [];
            new MutationObserver(() => {
                for (const node of document.querySelectorAll("#messages .queue:not([hidden])")) {
                    if (!window.queueTexts.includes(node.textContent)) window.queueTexts.push(node.textContent);
                }
            }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
        }"""
    )

    def hold(n: int) -> int:
        with sim_stack.client() as client:
            return client.post(
                "/ask", json={"prompt": f"hold {n} {uuid.uuid4().hex}"}, headers=other.headers
            ).status_code

    # Another user's generations take every one of the adapter's 16 slots for a moment.
    with ThreadPoolExecutor(max_workers=ADAPTER_SLOTS) as pool:
        holders = [pool.submit(hold, n) for n in range(ADAPTER_SLOTS)]
        wait_for(lambda: sim_stack.sim_stats()["running"] >= ADAPTER_SLOTS, what="every slot taken")
        ask(page, f"Я подожду {uuid.uuid4().hex[:6]}")
        answer = wait_answered(page)
        assert [h.result() for h in holders] == [200] * ADAPTER_SLOTS
    assert len(answer.split()) == SIM_WORDS
    seen = page.evaluate("() => window.queueTexts")
    assert any(re.fullmatch(r"В очереди, позиция \d+", text) for text in seen), seen


def test_clear_messages_for_401_429_and_503_and_token_refresh(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user = sim_stack.new_user()
    page = new_page()
    log_in(page, user.username, user.password)

    # A token about to expire is refreshed before the call that would have used it.
    old = stored_session(page)["access_token"]
    patch_session(page, expires_at=5_000)
    with page.expect_response("**/api/v1/auth/refresh") as refreshed:
        ask(page, f"Первый вопрос {uuid.uuid4().hex[:6]}")
    assert refreshed.value.status == 200
    wait_answered(page)
    assert stored_session(page)["access_token"] != old

    # A 401 (here: a token the server does not know) is answered by one refresh and a retry.
    patch_session(page, access_token="not-a-token")
    with page.expect_response("**/api/v1/auth/refresh") as refreshed:
        ask(page, f"Второй вопрос {uuid.uuid4().hex[:6]}")
    assert refreshed.value.status == 200
    wait_answered(page)
    expect(page.locator("#messages .msg.assistant")).to_have_count(2)
    expect(page.locator("#error")).to_be_hidden()

    # 429: the wait from Retry-After, and the question given back for later.
    sim_stack.set_limits(user, requests_per_minute=1)
    limited = f"Третий вопрос {uuid.uuid4().hex[:6]}"
    ask(page, limited)
    expect(page.locator("#error")).to_have_text(
        re.compile(r"Слишком много запросов\. Повторите через \d+ с\.")
    )
    expect(page.locator("#prompt")).to_have_value(limited)
    expect(page.locator("#messages .msg.assistant")).to_have_count(2)
    shot(page, "08-error-429-desktop")
    sim_stack.set_limits(user)

    # 503: the model server is down; the page says to try again.
    sim_stack.stop("upstream")
    try:
        page.fill("#prompt", "")
        ask(page, f"Есть кто? {uuid.uuid4().hex[:6]}")
        expect(page.locator("#error")).to_contain_text("Сервис занят или временно недоступен")
        expect(page.locator("#error")).to_contain_text("Повторите через")
        shot(page, "09-error-503-desktop")
    finally:
        sim_stack.start("upstream")
        sim_stack.wait_healthy()

    # 401 for good (both tokens rejected): back to the login form with a message.
    patch_session(page, access_token="not-a-token", refresh_token="not-a-refresh-token")
    page.fill("#prompt", "")
    ask(page, "Ещё вопрос")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#error")).to_have_text("Сеанс завершён. Войдите снова.")
    assert page.evaluate("() => sessionStorage.getItem('genai.session')") is None
    shot(page, "10-session-ended-desktop")


def test_logout_revokes_and_english_interface(new_page: Callable[..., Page], sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    page = new_page(locale="en-US")
    page.goto("/")
    expect(page.locator("#login-title")).to_have_text("Sign in")
    log_in(page, user.username, user.password)
    expect(page.locator("#send")).to_have_text("Send")
    page.select_option("#lang", "ru")
    expect(page.locator("#send")).to_have_text("Отправить")
    expect(page.locator("html")).to_have_attribute("lang", "ru")
    page.select_option("#lang", "en")
    expect(page.locator("#send")).to_have_text("Send")
    token = stored_session(page)["access_token"]
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#notice")).to_have_text("You have signed out.")
    with sim_stack.client() as client:
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_api_calls_are_listed_apart_from_the_page_dialogs(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user = sim_stack.new_user()
    tag = uuid.uuid4().hex[:6]
    # A script's call that names no conversation: stored, but not among the page's dialogs.
    script_prompt = f"Скрипт спрашивает {tag}"
    with sim_stack.client() as client:
        asked = client.post("/ask", json={"prompt": script_prompt}, headers=user.headers)
    assert asked.status_code == 200, asked.text
    call_id = asked.json()["conversation_id"]
    assert call_id

    page = new_page()
    with page.expect_request(lambda r: "/api/v1/history?" in r.url) as listed:
        log_in(page, user.username, user.password)
    assert "origin=chat" in listed.value.url, listed.value.url
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as sent:
        ask(page, f"Вопрос со страницы {tag}")
    assert json.loads(sent.value.post_data or "{}")["origin"] == "chat"
    wait_answered(page)
    chat_id = page.evaluate("() => location.hash.slice(3)")
    chat_item = page.locator(f'#conversation-list [data-conversation-id="{chat_id}"]')
    call_item = page.locator(f'#conversation-list [data-conversation-id="{call_id}"]')
    expect(chat_item).to_have_count(1)
    expect(call_item).to_have_count(0)
    expect(page.locator("#conversation-list .conv")).to_have_count(1)
    expect(page.locator("#list-note")).to_be_hidden()

    # The switch shows the API calls, and only them; a call opens like any dialog.
    with page.expect_request(lambda r: "/api/v1/history?" in r.url) as listed:
        page.click("#origin-toggle")
    assert "origin=api" in listed.value.url, listed.value.url
    expect(page.locator("#list-title")).to_have_text("Вызовы API")
    expect(call_item).to_contain_text("Скрипт спрашивает")
    expect(chat_item).to_have_count(0)
    expect(page.locator("#list-note")).to_be_visible()
    expect(page.locator("#origin-toggle")).to_have_text("Назад к диалогам")
    shot(page, "14-api-calls-desktop")
    call_item.click()
    expect(page.locator("#messages .msg.user .msg-body")).to_have_text(script_prompt)

    # Back to the dialogs; and a new chat from the API calls' list goes back to them too.
    page.click("#origin-toggle")
    expect(page.locator("#list-title")).to_have_text("Недавние")
    expect(chat_item).to_have_count(1)
    expect(call_item).to_have_count(0)
    page.click("#origin-toggle")
    expect(call_item).to_have_count(1)
    page.click("#new-chat")
    expect(page.locator("#list-title")).to_have_text("Недавние")
    expect(chat_item).to_have_count(1)
    page.select_option("#lang", "en")
    expect(page.locator("#origin-toggle")).to_have_text("API calls")


def test_real_model_answer_streams_into_the_page(live: RunningStack, playwright: Any) -> None:
    # llama.cpp with SmolLM2: a real model's text, whatever it writes, rendered by the same code.
    user = live.new_user()
    launched = launch_for(playwright, live)
    try:
        context = launched.new_context(base_url=live.base_url, locale="ru-RU", viewport=DESKTOP)
        watch = PageWatch(live.base_url)
        page = watch.attach(context.new_page())
        log_in(page, user.username, user.password)
        ask(page, f"Как посмотреть свободное место на диске в Linux? {uuid.uuid4().hex[:4]}")
        answer = wait_answered(page)
        assert answer.strip()
        expect(last_answer(page).locator(".badge.cache")).to_be_hidden()
        expect(last_answer(page).locator(".meta")).to_contain_text("модель")
        tags = page.evaluate(
            """() => [...new Set([...document.querySelectorAll("#messages .answer *")]
                .map((e) => e.tagName.toLowerCase()))]"""
        )
        assert set(tags) <= {
            "h3",
            "h4",
            "h5",
            "h6",
            "p",
            "br",
            "ul",
            "ol",
            "li",
            "strong",
            "em",
            "del",
            "a",
            "pre",
            "code",
            "blockquote",
            "hr",
            "div",
            "span",
            "button",
        }, tags
        expect(page.locator("#conversation-list .conv")).to_have_count(1)
        shot(page, "13-real-model-desktop")
        context.close()
        watch.check()
    finally:
        launched.close()


# --- the admin console ---------------------------------------------------------------------------------


def test_admin_console_users_usage_dialogs_and_audit(
    new_page: Callable[..., Page], sim_stack: RunningStack
) -> None:
    user = sim_stack.new_user()
    prompt = f"Личный вопрос {uuid.uuid4().hex[:6]}"
    with sim_stack.client() as client:
        asked = client.post("/ask", json={"prompt": prompt}, headers=user.headers)
    assert asked.status_code == 200, asked.text
    conversation_id = asked.json()["conversation_id"]

    # A plain user sees no console (and the API would refuse them anyway).
    plain = new_page()
    log_in(plain, user.username, user.password)
    expect(plain.locator("#admin-link")).to_be_hidden()
    plain.goto("/static/admin.html")
    expect(plain.locator("#denied")).to_contain_text("только для администраторов")
    expect(plain.locator("#console")).to_be_hidden()
    shot(plain, "11-admin-denied-desktop")

    page = new_page()
    log_in(page, sim_stack.admin_username, sim_stack.admin_password)
    page.click("#admin-link")
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator(f'#users-table tr[data-username="{user.username}"]')).to_contain_text("активен")

    # Create a user: the generated password is shown once, and works.
    new_name = f"b{uuid.uuid4().hex[:8]}"
    page.fill("#new-username", new_name)
    page.click("#create-button")
    expect(page.locator("#password-once")).to_be_visible()
    password = page.locator("#password-value").inner_text()
    assert len(password) >= 12
    assert sim_stack.login(new_name, password)
    row = page.locator(f'#users-table tr[data-username="{new_name}"]')
    expect(row).to_contain_text("по умолчанию")

    # Limits, then disable: both take effect at the gateway.
    row.locator("button", has_text="Лимиты").click()
    page.fill("#limit-requests_per_minute", "7")
    page.click("#modal button:has-text('Сохранить')")
    expect(row).to_contain_text("Запросов в минуту: 7")
    row.locator("button", has_text="Отключить").click()
    expect(row).to_contain_text("отключён")
    with sim_stack.client() as client:
        refused = client.post("/token", json={"username": new_name, "password": password})
    assert refused.status_code in (401, 403), refused.text
    row.locator("button", has_text="Включить").click()
    expect(row).to_contain_text("активен")

    # Reset the password: a new one is shown once, the old one stops working. Then promote by the select.
    row.locator("button", has_text="Сбросить пароль").click()
    page.click("#modal button:has-text('Сбросить пароль')")
    expect(page.locator("#notice")).to_contain_text("сброшен")
    new_password = page.locator("#password-value").inner_text()
    assert new_password != password and sim_stack.login(new_name, new_password)
    row.locator("select").select_option("admin")
    expect(page.locator("#notice")).to_contain_text("изменён")
    with sim_stack.client() as client:
        token = sim_stack.login(new_name, new_password)
        listed = client.get("/api/v1/users", headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text

    # Usage per user and day.
    page.select_option("#usage-owner", user.id)
    page.click("#usage-form button[type=submit]")
    usage_row = page.locator("#usage-table tbody tr").first
    expect(usage_row).to_contain_text(user.username)
    expect(usage_row.locator("td").nth(2)).to_have_text("1")

    # Another user's dialog, and the audit log's record of reading it: who, whose, what, when.
    page.select_option("#dialogs-owner", user.id)
    page.click("#dialogs-form button[type=submit]")
    dialog_row = page.locator(f'#dialogs-table tr[data-conversation-id="{conversation_id}"]')
    expect(dialog_row).to_contain_text(user.username)
    dialog_row.locator("button").click()
    expect(page.locator("#dialog-view")).to_contain_text(prompt)
    read = page.locator("#audit-table tbody tr[data-action='read_conversation']").first
    expect(read).to_contain_text(conversation_id)
    cells = read.locator("td")
    expect(cells.nth(1)).to_have_text(sim_stack.admin_username)
    expect(cells.nth(2)).to_have_text("прочитал диалог")
    expect(cells.nth(3)).to_have_text(user.username)
    when = read.locator("time").get_attribute("datetime") or ""
    assert abs(time.time() - _epoch(when)) < 120, when
    shot(page, "12-admin-desktop", full_page=True)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- phones and accessibility ---------------------------------------------------------------------------


def _axe(page: Page, name: str) -> list[dict[str, Any]]:
    """Runs axe-core on the page; writes its findings; returns the violations."""
    result = page.evaluate("async () => await axe.run(document, { resultTypes: ['violations'] })")
    violations = list(result["violations"])
    AXE_REPORTS.mkdir(parents=True, exist_ok=True)
    (AXE_REPORTS / f"{name}.json").write_text(json.dumps(violations, indent=2, ensure_ascii=False))
    for v in violations:
        print(f"axe {name}: {v['impact']}: {v['id']} ({len(v['nodes'])}): {v['help']}")
    return violations


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """tests/node_modules as tests/package-lock.json pins it (installed when a package is missing)."""
    if not (AXE_JS.exists() and MARKDOWN_IT_JS.exists()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is missing: tests/package-lock.json cannot be installed")
        subprocess.run(
            [npm, "ci", "--prefix", str(TESTS_DIR), "--ignore-scripts", "--no-audit", "--no-fund"], check=True
        )
    return TESTS_DIR / "node_modules"


@pytest.fixture(scope="module")
def axe_source(node_modules: Path) -> Path:
    return AXE_JS


def test_pages_on_a_phone_and_accessibility(
    new_page: Callable[..., Page], sim_stack: RunningStack, axe_source: Path
) -> None:
    user = sim_stack.new_user()
    with sim_stack.client() as client:
        for prompt in (
            f"Как очистить кэш apt? {uuid.uuid4().hex[:4]}",
            f"Что такое systemd? {uuid.uuid4().hex[:4]}",
        ):
            # As dialogs of the page, so that they are in its list.
            asked = client.post("/ask", json={"prompt": prompt, "origin": "chat"}, headers=user.headers)
            assert asked.status_code == 200, asked.text
    findings: dict[str, list[dict[str, Any]]] = {}

    for phone in (False, True):
        size = "phone" if phone else "desktop"
        page = new_page(phone=phone)
        # Injected by the DevTools protocol before the page's own scripts: the site's CSP, which allows
        # scripts from its own files only, would refuse a <script> tag added to the page.
        page.context.add_init_script(path=str(axe_source))
        page.goto("/")
        expect(page.locator("#login-view")).to_be_visible()
        findings[f"login-{size}"] = _axe(page, f"login-{size}")
        if phone:
            shot(page, "20-login-phone")
        log_in(page, user.username, user.password)
        ask(page, "Покажи пример:\n\n```bash\nsudo apt-get clean\n```\n\n- шаг **один**\n- шаг `два`")
        wait_answered(page)
        findings[f"chat-{size}"] = _axe(page, f"chat-{size}")
        if phone:
            shot(page, "21-chat-phone")
            page.click("#sidebar-toggle")
            expect(page.locator("#sidebar")).to_be_visible()
            expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
            page.wait_for_timeout(300)
            findings["sidebar-phone"] = _axe(page, "sidebar-phone")
            shot(page, "22-conversations-phone")
            page.locator("#conversation-list .conv-open").nth(1).click()
            expect(page.locator("#sidebar")).not_to_have_class(re.compile("open"))
            expect(page.locator("#messages .msg.user")).to_have_count(1)
            shot(page, "23-history-phone")
            # Nothing spills sideways on a phone.
            assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
        else:
            shot(page, "24-chat-desktop")
            page.click("#rename")
            expect(page.locator("#modal")).to_be_visible()
            findings["rename-dialog-desktop"] = _axe(page, "rename-dialog-desktop")
            page.keyboard.press("Escape")

    admin = new_page()
    admin.context.add_init_script(path=str(axe_source))
    log_in(admin, sim_stack.admin_username, sim_stack.admin_password)
    admin.goto("/static/admin.html")
    expect(admin.locator("#users-table tbody tr").first).to_be_visible()
    admin.select_option("#dialogs-owner", user.id)
    admin.click("#dialogs-form button[type=submit]")
    admin.locator("#dialogs-table tbody tr button").first.click()
    expect(admin.locator("#dialog-view")).to_be_visible()
    findings["admin-desktop"] = _axe(admin, "admin-desktop")
    phone_admin = new_page(phone=True)
    phone_admin.context.add_init_script(path=str(axe_source))
    log_in(phone_admin, sim_stack.admin_username, sim_stack.admin_password)
    phone_admin.goto("/static/admin.html")
    expect(phone_admin.locator("#users-table tbody tr").first).to_be_visible()
    findings["admin-phone"] = _axe(phone_admin, "admin-phone")
    shot(phone_admin, "25-admin-phone")

    critical = {
        name: [v["id"] for v in found if v["impact"] == "critical"] for name, found in findings.items()
    }
    serious = {name: [v["id"] for v in found if v["impact"] == "serious"] for name, found in findings.items()}
    assert all(not ids for ids in critical.values()), f"critical accessibility violations: {critical}"
    assert all(not ids for ids in serious.values()), f"serious accessibility violations: {serious}"
