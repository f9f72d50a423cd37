"""Dialog exports as files: JSON (for programs), CSV (for spreadsheets) and PDF (for reading and printing).

Prompts and responses are data in every format: nothing is interpreted as markup, CSV cells a spreadsheet
would run as formulas are defused, and the PDF gets plain lines of text in an embedded font with Cyrillic.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import json
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from genai.history.v1 import history_pb2
from starlette.concurrency import run_in_threadpool

from genai_gateway.errors import ApiError
from genai_gateway.quota import Quotas
from genai_gateway.settings import DEFAULT_PDF_FONT, GatewaySettings

if TYPE_CHECKING:
    from fpdf import FPDF

logger = logging.getLogger(__name__)

Format = Literal["json", "csv", "pdf"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
}

CSV_COLUMNS = (
    "conversation_id",
    "conversation_title",
    "message_id",
    "created_at",
    "prompt",
    "response",
    "source",
    "model",
    "prompt_tokens",
    "completion_tokens",
)

# Spreadsheets run a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# Where distributions put DejaVu Sans: Debian/Ubuntu (fonts-dejavu-core), then Red OS/RHEL/Fedora
# (dejavu-sans-fonts) and older RHEL.
KNOWN_FONT_PATHS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REPLACEMENT = "\ufffd"
_FONT = "export"


class FontMissing(RuntimeError):
    """The PDF font file is not where the settings say."""


@dataclass
class ConversationExport:
    """One conversation and its messages, oldest first."""

    summary: history_pb2.ConversationSummary
    messages: list[history_pb2.Message] = field(default_factory=list)


def iso_utc(millis: int) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2024-05-06T07:08:09.123Z."""
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def group(items: Iterable[history_pb2.ExportedMessage]) -> list[ConversationExport]:
    """Messages as the history service streams them (grouped by conversation) into conversations."""
    conversations: list[ConversationExport] = []
    for item in items:
        if not conversations or conversations[-1].summary.id != item.conversation.id:
            conversations.append(ConversationExport(summary=item.conversation))
        conversations[-1].messages.append(item.message)
    return conversations


def filename(stem: str, fmt: Format) -> str:
    """A download name made only of safe characters, whatever the stem holds."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "export"
    return f"{safe[:100]}.{fmt}"


# --- JSON and CSV, written as the messages arrive ---------------------------------------------------------


def _message_json(m: history_pb2.Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "created_at": iso_utc(m.created_at_ms),
        "prompt": m.prompt,
        "response": m.response,
        "source": m.source,
        "model": m.model,
        "usage": {
            "prompt_tokens": m.usage.prompt_tokens,
            "completion_tokens": m.usage.completion_tokens,
            "total_tokens": m.usage.total_tokens,
        },
        "latency_ms": m.latency_ms,
        "request_id": m.request_id,
    }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class JsonWriter:
    """The JSON document piece by piece: {"exported_at", "conversations": [{..., "messages": [...]}]}.

    Messages come grouped by conversation (as the history service streams them), so each conversation is
    opened at its first message and closed at the next one's, and nothing is held but the current id.
    """

    def __init__(self, exported_at: datetime) -> None:
        self.exported_at = exported_at
        self.current: str | None = None

    def start(self) -> bytes:
        at = self.exported_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return f'{{"exported_at": {_dumps(at)}, "conversations": ['.encode()

    def item(self, item: history_pb2.ExportedMessage) -> bytes:
        out = ""
        c = item.conversation
        if c.id != self.current:
            head = {
                "id": c.id,
                "title": c.title,
                "owner_id": c.owner_id,
                "created_at": iso_utc(c.created_at_ms),
                "updated_at": iso_utc(c.updated_at_ms),
                "message_count": c.message_count,
            }
            out = ("]}, " if self.current is not None else "") + _dumps(head)[:-1] + ', "messages": ['
            self.current = c.id
        else:
            out = ", "
        return (out + _dumps(_message_json(item.message))).encode()

    def end(self) -> bytes:
        return ("]}" if self.current is not None else "").encode() + b"]}\n"


def csv_cell(value: str | int) -> str | int:
    """Defuse a cell a spreadsheet would evaluate: a leading quote makes it text."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class CsvWriter:
    """RFC 4180 CSV, UTF-8 with a byte order mark so that Excel reads Cyrillic correctly; a row per message."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    def _row(self, values: Iterable[str | int]) -> bytes:
        self._writer.writerow([csv_cell(value) for value in values])
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode("utf-8")

    def start(self) -> bytes:
        return "\ufeff".encode() + self._row(CSV_COLUMNS)

    def item(self, item: history_pb2.ExportedMessage) -> bytes:
        c, m = item.conversation, item.message
        return self._row(
            (
                c.id,
                c.title,
                m.id,
                iso_utc(m.created_at_ms),
                m.prompt,
                m.response,
                m.source,
                m.model,
                m.usage.prompt_tokens,
                m.usage.completion_tokens,
            )
        )

    def end(self) -> bytes:
        return b""


def _whole(writer: JsonWriter | CsvWriter, conversations: Sequence[ConversationExport]) -> bytes:
    pieces = [writer.start()]
    for c in conversations:
        pieces += [
            writer.item(history_pb2.ExportedMessage(conversation=c.summary, message=m)) for m in c.messages
        ]
    return b"".join([*pieces, writer.end()])


def to_json(conversations: Sequence[ConversationExport], exported_at: datetime) -> bytes:
    return _whole(JsonWriter(exported_at), conversations)


def to_csv(conversations: Sequence[ConversationExport]) -> bytes:
    return _whole(CsvWriter(), conversations)


# --- PDF -------------------------------------------------------------------------------------------------


def resolve_font(configured: str, default: str) -> Path:
    """The font file to embed: the configured one, or (left at the default) wherever the system keeps it."""
    candidates = [configured]
    if configured == default:
        candidates += [path for path in KNOWN_FONT_PATHS if path != configured]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path
    raise FontMissing(f"no PDF font at {configured}")


@functools.lru_cache(maxsize=4)
def _glyphs(font_path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    return frozenset(TTFont(font_path, lazy=True).getBestCmap())


def printable(text: str, glyphs: frozenset[int]) -> str:
    """Text the font can draw: control characters and missing glyphs become U+FFFD, format characters
    (bidi overrides, zero-width marks) go, tabs become spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    table: dict[int, str | None] = {}
    for char in set(text):
        if char == "\n":
            continue
        category = unicodedata.category(char)
        if category == "Cf":
            table[ord(char)] = None
        elif category == "Cc" or ord(char) not in glyphs:
            table[ord(char)] = _REPLACEMENT
    return text.translate(table) if table else text


_TOKENS = re.compile(r"\S+|\s+")


def wrap(text: str, width: float, measure: Callable[[str], float]) -> list[str]:
    """Greedy line breaking at spaces; a word wider than a line is cut. Newlines are kept."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line, line_width = "", 0.0
        for token in _TOKENS.findall(paragraph):
            token_width = measure(token)
            if line_width + token_width <= width:
                line, line_width = line + token, line_width + token_width
                continue
            if line.strip():
                lines.append(line.rstrip())
            line, line_width = "", 0.0
            if token.isspace():
                continue
            if token_width <= width:
                line, line_width = token, token_width
                continue
            for char in token:
                char_width = measure(char)
                if line and line_width + char_width > width:
                    lines.append(line)
                    line, line_width = "", 0.0
                line, line_width = line + char, line_width + char_width
        lines.append(line.rstrip())
    return lines


@functools.cache
def _document_class() -> type[FPDF]:
    """fpdf2's document with page numbers. Imported on the first PDF export: fpdf2 brings Pillow and
    fontTools, some 20 MB a gateway would otherwise hold from its start whether anyone exports or not."""
    from fpdf import FPDF

    class Document(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(_FONT, size=8)
            self.set_text_color(120)
            self.cell(0, 6, str(self.page_no()), align="C")

    return Document


class _Writer:
    """Lays text out line by line.

    fpdf2's multi_cell measures the line so far again for every character it adds, which makes it manage
    only some 40,000 characters a second; measuring each word once and placing whole lines with cell()
    is about ten times faster, and the text is drawn by the same font code either way.
    """

    def __init__(self, pdf: FPDF, glyphs: frozenset[int]) -> None:
        self.pdf = pdf
        self.glyphs = glyphs
        self._widths: dict[tuple[float, str], float] = {}

    def _measure(self, token: str) -> float:
        key = (self.pdf.font_size_pt, token)
        width = self._widths.get(key)
        if width is None:
            width = self._widths[key] = self.pdf.get_string_width(token)
        return width

    def text(self, text: str, size: float, gray: int = 0, line_height: float | None = None) -> None:
        pdf = self.pdf
        pdf.set_font(_FONT, size=size)
        pdf.set_text_color(gray)
        height = line_height or size * 0.5
        width = pdf.epw - 2 * pdf.c_margin
        for line in wrap(printable(text, self.glyphs), width, self._measure):
            pdf.cell(0, height, line, new_x="LMARGIN", new_y="NEXT")


def to_pdf(conversations: Sequence[ConversationExport], font_path: Path, heading: str) -> bytes:
    """A readable document: each conversation with its title, then every prompt and response in order."""
    glyphs = _glyphs(str(font_path))
    pdf = _document_class()(format="A4")
    pdf.set_auto_page_break(auto=True, margin=16)
    pdf.add_font(_FONT, "", str(font_path))
    pdf.set_title(printable(heading, glyphs))
    pdf.set_creator("GenAI service")
    pdf.add_page()
    out = _Writer(pdf, glyphs)
    total = sum(len(c.messages) for c in conversations)
    out.text(heading, 16)
    out.text(f"{len(conversations)} conversations, {total} messages", 9, gray=100)
    for conversation in conversations:
        summary = conversation.summary
        pdf.ln(4)
        out.text(summary.title or "(untitled)", 13)
        out.text(
            f"{summary.id} \u00b7 started {_readable(summary.created_at_ms)} \u00b7 "
            f"{summary.message_count} messages",
            8,
            gray=100,
        )
        for message in conversation.messages:
            pdf.ln(2)
            source = "from cache" if message.source == "cache" else "model"
            tokens = f"{message.usage.prompt_tokens} + {message.usage.completion_tokens} tokens"
            details = " \u00b7 ".join(part for part in (message.model, source, tokens) if part)
            out.text(f"{_readable(message.created_at_ms)} \u00b7 {details}", 8, gray=100)
            out.text("Prompt", 9, gray=80)
            out.text(message.prompt, 10)
            out.text("Response", 9, gray=80)
            out.text(message.response, 10)
    return bytes(pdf.output())


def _readable(millis: int) -> str:
    return (_EPOCH + timedelta(milliseconds=millis)).strftime("%Y-%m-%d %H:%M UTC")


# --- the answer ---------------------------------------------------------------------------------------------


async def export_file(
    request: Request,
    user_id: str,
    call: AsyncIterator[history_pb2.ExportedMessage],
    fmt: Format,
    stem: str,
    heading: str,
) -> Response:
    """`download`, counted against the caller's export limits (so many a minute, so many at once): the
    export holds its place until its file has been sent."""
    settings: GatewaySettings = request.app.state.settings
    quotas: Quotas = request.app.state.pipeline.quotas
    admission = await quotas.admit_read(
        "exports", user_id, settings.exports_per_minute, settings.exports_at_once
    )
    try:
        return await download(call, fmt, stem, heading, settings, done=lambda: quotas.settle(admission, 0))
    except BaseException:
        await asyncio.shield(quotas.settle(admission, 0))
        raise


async def download(
    call: AsyncIterator[history_pb2.ExportedMessage],
    fmt: Format,
    stem: str,
    heading: str,
    settings: GatewaySettings,
    done: Callable[[], Awaitable[None]] | None = None,
) -> Response:
    """Read an export stream from the history service and answer it as a file to save.

    JSON and CSV are written as the messages arrive, so the gateway's memory does not grow with the size of
    an export. The first message is awaited before the answer starts, so that a failure at once (an
    unknown conversation, history down) still gets its own status; a failure later ends the download
    early, which the client sees as an incomplete transfer. A PDF is laid out whole, up to
    `export_pdf_max_chars` (refused as soon as the stream passes it).
    """
    headers = {
        "Content-Disposition": f'attachment; filename="{filename(stem, fmt)}"',
        "Cache-Control": "no-store",
    }
    if fmt == "pdf":
        body = await _pdf(call, heading, settings)
        if done is not None:
            await done()
        return Response(content=body, media_type=MEDIA_TYPES[fmt], headers=headers)
    writer: JsonWriter | CsvWriter = JsonWriter(datetime.now(UTC)) if fmt == "json" else CsvWriter()
    items = aiter(call)
    first = await anext(items, None)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield writer.start()
            if first is not None:
                yield writer.item(first)
                async for item in items:
                    yield writer.item(item)
            yield writer.end()
        finally:
            await items.aclose()  # type: ignore[attr-defined]
            if done is not None:
                await asyncio.shield(done())

    return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt], headers=headers)


async def _pdf(
    call: AsyncIterator[history_pb2.ExportedMessage], heading: str, settings: GatewaySettings
) -> bytes:
    limit = settings.export_pdf_max_chars
    items: list[history_pb2.ExportedMessage] = []
    chars = 0
    async for item in call:
        chars += len(item.message.prompt) + len(item.message.response)
        if chars > limit:
            raise ApiError(
                400,
                f"this export holds more than {limit} characters, the limit for PDF exports: "
                "export as CSV or JSON, or one conversation at a time",
            )
        items.append(item)
    try:
        font = resolve_font(settings.pdf_font, DEFAULT_PDF_FONT)
    except FontMissing:
        logger.error("PDF export unavailable: no font file at %s (GENAI_GATEWAY_PDF_FONT)", settings.pdf_font)
        raise ApiError(503, "PDF export is unavailable on this server; export as CSV or JSON") from None
    # Laying out pages is CPU work: off the event loop, so other requests keep moving.
    return await run_in_threadpool(to_pdf, group(items), font, heading)
