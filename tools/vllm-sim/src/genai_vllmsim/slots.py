"""The engine's concurrency cap: at most N requests generate, the rest wait first come, first served."""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """A FIFO semaphore whose occupancy and queue length can be read for metrics.

    asyncio.Semaphore would do the limiting, but neither exposes the queue length nor promises
    strict arrival order in every Python version, and both matter here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.limit and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just before the cancellation: pass it on.
                self.release()
            else:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # Hand the slot over directly, so a newcomer cannot overtake the queue.
                waiter.set_result(None)
                return
        self.running -= 1
