import base64
import uuid
from datetime import UTC, datetime

import pytest
from genai_history.paging import Cursor, InvalidPageToken, decode_page_token, encode_page_token


def test_round_trip_keeps_microseconds() -> None:
    cursor = Cursor(updated_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), id=uuid.uuid4())
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
