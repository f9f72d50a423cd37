"""Export files: JSON, CSV for spreadsheets (BOM, quoting, no formulas) and PDF with Cyrillic text."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from genai.history.v1 import history_pb2
from pypdf import PdfReader

from genai_gateway import exports
from genai_gateway.errors import ApiError
from genai_gateway.settings import DEFAULT_PDF_FONT, GatewaySettings

FONT = Path(DEFAULT_PDF_FONT)
needs_font = pytest.mark.skipif(
    not FONT.is_file(), reason="DejaVu Sans missing: apt-get install fonts-dejavu-core"
)


def item(
    conversation: str, title: str, message: str, prompt: str, response: str, **fields
) -> history_pb2.ExportedMessage:
    return history_pb2.ExportedMessage(
        conversation=history_pb2.ConversationSummary(
            id=conversation, title=title, owner_id="owner-1", created_at_ms=1_700_000_000_000, message_count=2
        ),
        message=history_pb2.Message(
            id=message,
            prompt=prompt,
            response=response,
            source=fields.get("source", "model"),
            model="smollm2",
            usage=history_pb2.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
            created_at_ms=fields.get("created_at_ms", 1_700_000_000_123),
        ),
    )


SAMPLE = [
    item("c1", "Вопрос о погоде", "m1", "Какая погода в Москве?", "Солнечно, +5 °C.\nВторая строка"),
    item("c1", "Вопрос о погоде", "m2", "=1+2", '-> "quoted", comma', source="cache"),
    item("c2", "@home", "m3", "+cmd", "@SUM(A1)"),
]


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_group_keeps_the_order_of_the_stream() -> None:
    conversations = exports.group(SAMPLE)
    assert [(c.summary.id, [m.id for m in c.messages]) for c in conversations] == [
        ("c1", ["m1", "m2"]),
        ("c2", ["m3"]),
    ]


def test_iso_utc() -> None:
    assert exports.iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert exports.iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_json_holds_everything_as_text() -> None:
    body = exports.to_json(exports.group(SAMPLE), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    document = json.loads(body.decode("utf-8"))
    assert document["exported_at"] == "2024-01-02T03:04:05Z"
    [first, second] = document["conversations"]
    assert first["title"] == "Вопрос о погоде"
    assert first["owner_id"] == "owner-1"
    assert first["messages"][0]["prompt"] == "Какая погода в Москве?"
    assert first["messages"][0]["created_at"] == "2023-11-14T22:13:20.123Z"
    assert first["messages"][0]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    # JSON is data, not a spreadsheet: values stay exactly as stored.
    assert first["messages"][1]["prompt"] == "=1+2"
    assert second["messages"][0]["response"] == "@SUM(A1)"
    assert "Вопрос".encode() in body  # UTF-8, not \u escapes


def test_csv_has_a_bom_quotes_properly_and_defuses_formulas() -> None:
    body = exports.to_csv(exports.group(SAMPLE))
    assert body.startswith(b"\xef\xbb\xbf")
    text = body.decode("utf-8-sig")
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0]) == list(exports.CSV_COLUMNS)
    assert [r["message_id"] for r in rows] == ["m1", "m2", "m3"]
    assert rows[0]["response"] == "Солнечно, +5 °C.\nВторая строка"
    assert rows[0]["created_at"] == "2023-11-14T22:13:20.123Z"
    assert rows[0]["prompt_tokens"] == "3" and rows[0]["completion_tokens"] == "4"
    assert rows[1]["prompt"] == "'=1+2"
    assert rows[1]["response"] == '\'-> "quoted", comma'
    assert rows[1]["source"] == "cache"
    assert rows[2]["conversation_title"] == "'@home"
    assert rows[2]["prompt"] == "'+cmd"
    assert rows[2]["response"] == "'@SUM(A1)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=A1", "'=A1"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        ("", ""),
        (5, 5),
        ("Привет", "Привет"),
    ],
)
def test_csv_cell(value, expected) -> None:
    assert exports.csv_cell(value) == expected


@needs_font
def test_pdf_embeds_a_font_with_cyrillic_and_keeps_markup_as_text() -> None:
    risky = '<img src=x onerror=alert(1)> <script>alert("x")</script> **bold** # heading'
    body = exports.to_pdf(
        exports.group([*SAMPLE, item("c3", "HTML", "m4", "show me", risky)]), FONT, "Экспорт бесед"
    )
    assert body.startswith(b"%PDF-")
    reader = PdfReader(io.BytesIO(body))
    text = _text(body)
    assert "Экспорт бесед" in text
    assert "Какая погода в Москве?" in text
    assert "Солнечно, +5 °C." in text
    assert '<script>alert("x")</script>' in text
    assert "**bold** # heading" in text
    [font] = [f.get_object() for page in reader.pages[:1] for f in page["/Resources"]["/Font"].values()]
    assert "DejaVuSans" in str(font["/BaseFont"])
    # Embedded (a subset of the TrueType file), so any reader shows the Cyrillic text without the font.
    descriptor = font["/DescendantFonts"][0].get_object()["/FontDescriptor"].get_object()
    assert "/FontFile2" in descriptor


@needs_font
def test_pdf_survives_long_words_control_characters_and_missing_glyphs() -> None:
    prompt = "x" * 5000 + " \x07 \u202e\u4e2d\u6587 😀 \t tab"
    body = exports.to_pdf(exports.group([item("c", "t", "m", prompt, "ok " * 3000)]), FONT, "t")
    text = _text(body)
    assert text.count("x") >= 5000
    assert "\ufffd" in text  # the bell and the CJK characters DejaVu Sans lacks, visibly replaced


def test_printable() -> None:
    glyphs = frozenset(map(ord, "abc \n"))
    assert exports.printable("a\x07b\u202ec\r\nd\te", glyphs) == "a\ufffdbc\n\ufffd   \ufffd"


def test_wrap_breaks_at_spaces_and_cuts_long_words() -> None:
    def measure(text: str) -> float:
        return float(len(text))

    assert exports.wrap("aaa bbb ccc", 7, measure) == ["aaa bbb", "ccc"]
    assert exports.wrap("abcdefghij", 4, measure) == ["abcd", "efgh", "ij"]
    assert exports.wrap("one\n\ntwo", 10, measure) == ["one", "", "two"]
    assert exports.wrap("  indented code", 20, measure) == ["  indented code"]
    lines = exports.wrap("word " * 50, 12, measure)
    assert all(len(line) <= 12 for line in lines)
    assert " ".join(lines).split() == ["word"] * 50


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("conversation-6f1c", "conversation-6f1c.csv"),
        ('a"; filename=evil.exe', "a-filename-evil.exe.csv"),
        ("../../etc/passwd", "etc-passwd.csv"),
        ("Беседа", "export.csv"),
    ],
)
def test_filenames_are_safe(stem: str, expected: str) -> None:
    assert exports.filename(stem, "csv") == expected


def test_font_is_found_where_the_system_keeps_it(tmp_path: Path) -> None:
    own = tmp_path / "font.ttf"
    own.write_bytes(b"x")
    assert exports.resolve_font(str(own), DEFAULT_PDF_FONT) == own
    with pytest.raises(exports.FontMissing):
        exports.resolve_font(str(tmp_path / "missing.ttf"), DEFAULT_PDF_FONT)
    if FONT.is_file():
        assert exports.resolve_font(DEFAULT_PDF_FONT, DEFAULT_PDF_FONT) == FONT


async def stream(*items: history_pb2.ExportedMessage):
    for one in items:
        yield one


async def test_download_answers_a_file_to_save() -> None:
    response = await exports.download(stream(*SAMPLE), "csv", "conversation-c1", "Export", GatewaySettings())
    assert response.status_code == 200
    assert response.media_type == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="conversation-c1.csv"'
    assert response.headers["cache-control"] == "no-store"
    body = b"".join([piece async for piece in response.body_iterator])  # type: ignore[attr-defined]
    assert body.startswith(b"\xef\xbb\xbf")
    assert body == exports.to_csv(exports.group(SAMPLE))


async def test_json_download_is_written_as_the_messages_arrive() -> None:
    arrived: list[str] = []

    async def watched():
        for one in SAMPLE:
            arrived.append(one.message.id)
            yield one

    response = await exports.download(watched(), "json", "c", "Export", GatewaySettings())
    # Only the first message is read before the answer starts; the rest as the body is sent.
    assert arrived == ["m1"]
    pieces = [piece async for piece in response.body_iterator]  # type: ignore[attr-defined]
    assert arrived == ["m1", "m2", "m3"] and len(pieces) == 5
    document = json.loads(b"".join(pieces))
    assert [m["id"] for c in document["conversations"] for m in c["messages"]] == ["m1", "m2", "m3"]
    empty = await exports.download(stream(), "json", "c", "Export", GatewaySettings())
    body = b"".join([piece async for piece in empty.body_iterator])  # type: ignore[attr-defined]
    assert json.loads(body)["conversations"] == []


@needs_font
async def test_download_renders_pdf() -> None:
    response = await exports.download(stream(*SAMPLE), "pdf", "c", "Экспорт", GatewaySettings())
    assert response.body.startswith(b"%PDF")
    assert "Какая погода в Москве?" in _text(response.body)


async def test_download_refuses_a_pdf_over_the_cap() -> None:
    settings = GatewaySettings(export_pdf_max_chars=20)
    with pytest.raises(ApiError) as caught:
        await exports.download(stream(*SAMPLE), "pdf", "c", "t", settings)
    assert caught.value.status == 400
    assert "CSV or JSON" in caught.value.message
    # The cap is the PDF's alone.
    assert (await exports.download(stream(*SAMPLE), "csv", "c", "t", settings)).status_code == 200


async def test_download_without_the_font_is_unavailable(tmp_path: Path) -> None:
    settings = GatewaySettings(pdf_font=str(tmp_path / "none.ttf"))
    with pytest.raises(ApiError) as caught:
        await exports.download(stream(*SAMPLE), "pdf", "c", "t", settings)
    assert caught.value.status == 503


def test_the_pdf_library_loads_with_the_first_pdf_only() -> None:
    """fpdf2 with Pillow and fontTools is some 30 MB that a gateway holds only once someone exports a PDF."""
    code = (
        "import sys, genai_gateway.main\n"
        "print(sorted(m for m in ('fpdf', 'PIL', 'fontTools') if m in sys.modules))"
    )
    started = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert started.stdout.strip() == "[]"
