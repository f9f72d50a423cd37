import base64
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest

from genai_history.paging import (
    Cursor,
    InvalidPageToken,
    UsageCursor,
    decode_audit_token,
    decode_page_token,
    decode_search_token,
    decode_usage_token,
    encode_audit_token,
    encode_page_token,
    encode_usage_token,
)


def test_round_trip_keeps_microseconds() -> None:
    cursor = Cursor(at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), id=uuid.uuid4())
    token = encode_page_token(cursor)
    assert "=" not in token
    assert decode_page_token(token) == cursor


@pytest.mark.parametrize(
    "token",
    [
        "garbage!!",
        "\u00e9t\u00e9",
        base64.urlsafe_b64encode(b"no-colon").decode(),
        base64.urlsafe_b64encode(b"abc:" + str(uuid.uuid4()).encode()).decode(),
        base64.urlsafe_b64encode(b"123:not-a-uuid").decode(),
        base64.urlsafe_b64encode(b"1:2:3").decode(),
        base64.urlsafe_b64encode(b"99999999999999999999999:" + str(uuid.uuid4()).encode()).decode(),
    ],
)
def test_tokens_not_made_here_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(token)


@pytest.mark.parametrize(
    ("decode", "text"),
    [
        # Beyond PostgreSQL's `real` and `bigint`: refused here, not by the database as an internal error.
        (decode_search_token, f"search:1e300:0:{uuid.uuid4()}"),
        (decode_search_token, f"search:-4e38:0:{uuid.uuid4()}"),
        (decode_audit_token, "audit:9223372036854775808"),
    ],
)
def test_cursors_beyond_the_columns_range_are_refused(decode: Callable[[str], object], text: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode(base64.urlsafe_b64encode(text.encode()).decode().rstrip("="))


def test_audit_and_usage_tokens_round_trip() -> None:
    assert decode_audit_token(encode_audit_token(12345)) == 12345
    usage = UsageCursor(day=date(2024, 2, 29), owner_id=uuid.uuid4())
    assert decode_usage_token(encode_usage_token(usage)) == usage


def test_tokens_of_one_list_are_refused_by_another() -> None:
    conversation_token = encode_page_token(Cursor(at=datetime(2024, 1, 1, tzinfo=UTC), id=uuid.uuid4()))
    audit_token = encode_audit_token(7)
    usage_token = encode_usage_token(UsageCursor(day=date(2024, 1, 1), owner_id=uuid.uuid4()))
    for token, decode in (
        (conversation_token, decode_audit_token),
        (conversation_token, decode_usage_token),
        (audit_token, decode_page_token),
        (audit_token, decode_usage_token),
        (usage_token, decode_audit_token),
        (usage_token, decode_page_token),
    ):
        with pytest.raises(InvalidPageToken):
            decode(token)
