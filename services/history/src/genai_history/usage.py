"""Usage per owner and day (UTC), counted from the stored messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from genai_history.paging import UsageCursor

# Longest report, in days, both ends included: a year, leap day and all.
MAX_DAYS = 366


class InvalidRange(ValueError):
    """The days asked for are reversed or span more than MAX_DAYS."""


@dataclass(frozen=True)
class UsageRow:
    """What one owner used on one day. Tokens are the model's work: cache hits cost none."""

    day: date
    owner_id: uuid.UUID
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int


# Grouped over the smallest time range the page needs, then the keyset applied to the groups.
_REPORT = """
    SELECT day, owner_id, requests, prompt_tokens, completion_tokens, cache_hits FROM (
        SELECT (m.created_at AT TIME ZONE 'UTC')::date AS day,
               m.owner_id,
               count(*) AS requests,
               coalesce(sum(m.prompt_tokens) FILTER (WHERE m.source = 'model'), 0) AS prompt_tokens,
               coalesce(sum(m.completion_tokens) FILTER (WHERE m.source = 'model'), 0) AS completion_tokens,
               count(*) FILTER (WHERE m.source = 'cache') AS cache_hits
        FROM messages m
        WHERE m.created_at >= $1 AND m.created_at < $2 AND ($3::uuid IS NULL OR m.owner_id = $3)
        GROUP BY 1, 2
    ) totals
    WHERE $4::date IS NULL OR (day, owner_id) > ($4::date, $5::uuid)
    ORDER BY day, owner_id
    LIMIT $6
"""


def check_range(from_day: date, to_day: date) -> None:
    if to_day < from_day:
        raise InvalidRange("to_day must not be before from_day")
    if to_day >= date.max:
        raise InvalidRange("to_day must be before 9999-12-31")
    days = (to_day - from_day).days + 1
    if days > MAX_DAYS:
        raise InvalidRange(f"the range is {days} days; the longest report is {MAX_DAYS} days")


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


async def usage_report(
    pool: asyncpg.Pool,
    from_day: date,
    to_day: date,
    owner_id: uuid.UUID | None,
    limit: int,
    after: UsageCursor | None,
    acquire_timeout_s: float,
) -> tuple[list[UsageRow], UsageCursor | None]:
    """Rows ordered by day then owner, up to `limit`, and the next page's cursor (or None)."""
    check_range(from_day, to_day)
    start_day = max(from_day, after.day) if after else from_day
    async with pool.acquire(timeout=acquire_timeout_s) as conn:
        rows = await conn.fetch(
            _REPORT,
            _day_start(start_day),
            _day_start(to_day + timedelta(days=1)),
            owner_id,
            after.day if after else None,
            after.owner_id if after else None,
            limit + 1,
        )
    report = [
        UsageRow(
            day=row["day"],
            owner_id=row["owner_id"],
            requests=row["requests"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cache_hits=row["cache_hits"],
        )
        for row in rows[:limit]
    ]
    if len(rows) <= limit:
        return report, None
    return report, UsageCursor(day=report[-1].day, owner_id=report[-1].owner_id)
