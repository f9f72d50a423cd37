"""Waiting with a time limit without losing a cancellation.

Python 3.11's `asyncio.wait_for` returns the result when the awaited thing finishes in the same moment as
the waiting task is cancelled, and the cancellation is lost (CPython gh-86296; 3.12 rebuilt it on
`asyncio.timeout`). A loop that waits that way (wake on an event, or after an interval) then goes on for
ever after its task was cancelled: a service that does not stop, a test session that never ends.
`asyncio.timeout` counts cancellations and re-raises one that came from elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`awaitable`'s result, or TimeoutError after `seconds` (None: no limit), in the calling task."""
    async with asyncio.timeout(seconds):
        return await awaitable
