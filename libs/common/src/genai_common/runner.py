"""Running a service's main coroutine on uvloop, the event loop the gateway's uvicorn uses too.

Most of the gRPC services' time goes to the event loop itself (small round trips to PostgreSQL, Redis and
each other), where uvloop is several times cheaper than the standard loop.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(main)
