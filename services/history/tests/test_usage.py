"""UsageReport: requests, tokens and cache hits per owner and UTC day, from the stored messages."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from genai.history.v1 import history_pb2

from .support import Stub, append, fails_with, new_owner


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def usage(**tokens: int) -> history_pb2.Usage:
    return history_pb2.Usage(**tokens)


async def report(stub: Stub, from_day: str, to_day: str, **fields) -> history_pb2.UsageReportResponse:
    return await stub.UsageReport(history_pb2.UsageReportRequest(from_day=from_day, to_day=to_day, **fields))


def rows(reply: history_pb2.UsageReportResponse) -> list[tuple]:
    return [
        (r.day, r.owner_id, r.requests, r.prompt_tokens, r.completion_tokens, r.cache_hits)
        for r in reply.rows
    ]


async def test_counts_per_owner_and_utc_day(stub: Stub) -> None:
    alice, bob = new_owner(), new_owner()
    # 1991: a year no other test writes, so the report across owners holds only these rows.
    late = ms("1991-03-01T23:59:59.999")
    await append(stub, alice, created_at_ms=late, usage=usage(prompt_tokens=10, completion_tokens=5))
    await append(
        stub, alice, created_at_ms=late, source="cache", usage=usage(prompt_tokens=10, completion_tokens=5)
    )
    await append(
        stub,
        alice,
        created_at_ms=ms("1991-03-02T00:00:00"),
        usage=usage(prompt_tokens=1, completion_tokens=2),
    )
    await append(
        stub, bob, created_at_ms=ms("1991-03-01T12:00:00"), usage=usage(prompt_tokens=7, completion_tokens=8)
    )
    await append(stub, bob, created_at_ms=ms("1991-03-04T12:00:00"), usage=usage(prompt_tokens=100))

    reply = await report(stub, "1991-03-01", "1991-03-03")
    expected_first_day = sorted([("1991-03-01", alice, 2, 10, 5, 1), ("1991-03-01", bob, 1, 7, 8, 0)])
    assert rows(reply) == [*expected_first_day, ("1991-03-02", alice, 1, 1, 2, 0)]
    assert reply.next_page_token == ""

    only_bob = await report(stub, "1991-03-01", "1991-03-31", owner_id=bob)
    assert rows(only_bob) == [("1991-03-01", bob, 1, 7, 8, 0), ("1991-03-04", bob, 1, 100, 0, 0)]

    assert rows(await report(stub, "1991-03-05", "1991-03-05")) == []


async def test_pages_by_day_then_owner(stub: Stub) -> None:
    owners = sorted(new_owner() for _ in range(3))
    for owner in owners:
        for day in ("1992-05-01", "1992-05-02"):
            await append(stub, owner, created_at_ms=ms(f"{day}T10:00:00"))
    walked, token = [], ""
    for _ in range(10):
        reply = await report(stub, "1992-05-01", "1992-05-02", page_size=4, page_token=token)
        assert len(reply.rows) <= 4
        walked += [(r.day, r.owner_id) for r in reply.rows]
        token = reply.next_page_token
        if not token:
            break
    assert walked == [(day, owner) for day in ("1992-05-01", "1992-05-02") for owner in owners]


async def test_page_size_is_capped(start_server) -> None:
    stub = await start_server(max_usage_page_size=2)
    for _ in range(3):
        await append(stub, new_owner(), created_at_ms=ms("1993-01-01T10:00:00"))
    assert len((await report(stub, "1993-01-01", "1993-01-01")).rows) == 2
    assert len((await report(stub, "1993-01-01", "1993-01-01", page_size=50)).rows) == 2


async def test_a_year_and_a_leap_day_is_the_longest_range(stub: Stub) -> None:
    await report(stub, "2024-01-01", "2024-12-31")  # 366 days
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, report(stub, "2023-12-31", "2024-12-31"))
    assert "367 days" in details


@pytest.mark.parametrize(
    ("from_day", "to_day", "needle"),
    [
        ("", "2024-01-01", "from_day"),
        ("2024-1-1", "2024-01-02", "from_day"),
        ("2024-01-01", "2024-02-30", "to_day"),
        ("20240101", "2024-01-02", "from_day"),
        ("2024-01-02", "2024-01-01", "before"),
        ("9999-12-01", "9999-12-31", "to_day"),
    ],
)
async def test_bad_ranges(stub: Stub, from_day: str, to_day: str, needle: str) -> None:
    details = await fails_with(grpc.StatusCode.INVALID_ARGUMENT, report(stub, from_day, to_day))
    assert needle in details


async def test_bad_owner_or_token(stub: Stub) -> None:
    await fails_with(grpc.StatusCode.INVALID_ARGUMENT, report(stub, "2024-01-01", "2024-01-01", owner_id="x"))
    await fails_with(
        grpc.StatusCode.INVALID_ARGUMENT, report(stub, "2024-01-01", "2024-01-01", page_token="garbage!!")
    )
