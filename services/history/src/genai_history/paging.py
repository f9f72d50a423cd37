"""Opaque page tokens for keyset pagination: each list hands back where its next page starts."""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The largest values of PostgreSQL's `real` and `bigint`: a cursor beyond them was not made here.
FLOAT4_MAX = 3.4028234663852886e38
BIGINT_MAX = 2**63 - 1
_ONE_US = timedelta(microseconds=1)


class InvalidPageToken(ValueError):
    """The page token was not made by this service (or by another list of it)."""


@dataclass(frozen=True)
class Cursor:
    """Position after the last row of a page ordered by a time, newest first: that time and the row's id.

    Conversations are ordered by updated_at, search hits by their message's created_at.
    """

    at: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class SearchCursor:
    """Position after the last hit of a search page, ordered by relevance, then newest first.

    `rank` is PostgreSQL's `real` (float4) as read back: a Python float holds it exactly, so the next page's
    comparison with `$n::real` is exact.
    """

    rank: float
    at: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class UsageCursor:
    """Position after the last row of a usage page, ordered by day then owner."""

    day: date
    owner_id: uuid.UUID


def to_micros(moment: datetime) -> int:
    # Integer arithmetic on timedelta is exact, unlike timestamp() which goes through a float.
    return (moment - EPOCH) // _ONE_US


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def _encode(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode("ascii")).decode("ascii").rstrip("=")


def _decode(token: str) -> str:
    padded = token + "=" * (-len(token) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")


def encode_page_token(cursor: Cursor) -> str:
    return _encode(f"{to_micros(cursor.at)}:{cursor.id}")


def decode_page_token(token: str) -> Cursor:
    try:
        micros_text, id_text = _decode(token).split(":")
        if not micros_text.lstrip("-").isdigit():
            raise ValueError("not a number")
        return Cursor(at=from_micros(int(micros_text)), id=uuid.UUID(id_text))
    except (ValueError, binascii.Error, OverflowError) as exc:
        raise InvalidPageToken("invalid page token") from exc


def encode_search_token(cursor: SearchCursor) -> str:
    # repr: the shortest text that reads back as the same float.
    return _encode(f"search:{cursor.rank!r}:{to_micros(cursor.at)}:{cursor.id}")


def decode_search_token(token: str) -> SearchCursor:
    try:
        kind, rank_text, micros_text, id_text = _decode(token).split(":")
        if kind != "search" or not micros_text.lstrip("-").isdigit():
            raise ValueError("not a search token")
        rank = float(rank_text)
        # A rank is a `real` (float4) in PostgreSQL: anything beyond its range is no rank it gave.
        if not math.isfinite(rank) or abs(rank) > FLOAT4_MAX:
            raise ValueError("not a rank")
        return SearchCursor(rank=rank, at=from_micros(int(micros_text)), id=uuid.UUID(id_text))
    except (ValueError, binascii.Error, OverflowError) as exc:
        raise InvalidPageToken("invalid page token") from exc


# Audit events are listed newest first by their identity column, which only grows.
def encode_audit_token(last_id: int) -> str:
    return _encode(f"audit:{last_id}")


def decode_audit_token(token: str) -> int:
    try:
        kind, id_text = _decode(token).split(":")
        if kind != "audit" or not id_text.isdigit() or int(id_text) > BIGINT_MAX:
            raise ValueError("not an audit token")
        return int(id_text)
    except (ValueError, binascii.Error) as exc:
        raise InvalidPageToken("invalid page token") from exc


def encode_usage_token(cursor: UsageCursor) -> str:
    return _encode(f"usage:{cursor.day.isoformat()}:{cursor.owner_id}")


def decode_usage_token(token: str) -> UsageCursor:
    try:
        kind, day_text, owner_text = _decode(token).split(":")
        if kind != "usage":
            raise ValueError("not a usage token")
        return UsageCursor(day=date.fromisoformat(day_text), owner_id=uuid.UUID(owner_text))
    except (ValueError, binascii.Error) as exc:
        raise InvalidPageToken("invalid page token") from exc
