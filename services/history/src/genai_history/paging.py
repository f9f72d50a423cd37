"""Opaque page tokens for keyset pagination over conversations (newest updated first)."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


class InvalidPageToken(ValueError):
    """The page token was not made by this service."""


@dataclass(frozen=True)
class Cursor:
    """Position after the last conversation of a page: its updated_at and id."""

    updated_at: datetime
    id: uuid.UUID


def to_micros(moment: datetime) -> int:
    # Integer arithmetic on timedelta is exact, unlike timestamp() which goes through a float.
    return (moment - EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def encode_page_token(cursor: Cursor) -> str:
    raw = f"{to_micros(cursor.updated_at)}:{cursor.id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> Cursor:
    try:
        padded = token + "=" * (-len(token) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        micros_text, id_text = raw.split(":")
        if not micros_text.lstrip("-").isdigit():
            raise ValueError("not a number")
        return Cursor(updated_at=from_micros(int(micros_text)), id=uuid.UUID(id_text))
    except (ValueError, binascii.Error, OverflowError) as exc:
        raise InvalidPageToken("invalid page token") from exc
