"""Relaying credential changes, as PostgreSQL announces them, to the gateways that cache Authenticate answers.

Triggers (migration 0006) announce on one channel every committed change that can alter an Authenticate
answer, whoever makes it: this or another auth process, genai-auth-admin, a hand-written UPDATE. One
connection per auth process LISTENs, and each WatchCredentials stream gets every notice as it arrives.

A cache is only as good as the notices it is sure to get, so the feed tells its subscribers when it can
no longer promise them. Every heartbeat it makes a round trip on the listening connection (PostgreSQL
delivers a session's pending notices before it answers) and then sends a heartbeat; when the connection
fails, or a subscriber falls behind, that subscriber's stream is ended and the gateway stops trusting what
it cached until it is subscribed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
from genai.auth.v1 import auth_pb2

from genai_common.waiting import within

logger = logging.getLogger(__name__)

CHANNEL = "genai_auth_changes"
# The listening connection's name in pg_stat_activity.
APPLICATION_NAME = "genai-auth-credential-feed"
USER = "user:"
TOKEN = "token:"  # noqa: S105 (a notice's prefix, not a credential)
ALL = "all"
# Longest wait between two attempts to listen again after a failure.
MAX_BACKOFF_S = 5.0
# First wait after a failure; doubled while connecting keeps failing.
FIRST_BACKOFF_S = 0.2


class FeedUnavailable(Exception):
    """The feed cannot promise every notice to this subscriber (not listening, or it fell behind)."""


def parse_notice(payload: str) -> auth_pb2.CredentialChanges | None:
    """The change a notice names; None for a payload of another shape (logged, then ignored)."""
    if payload.startswith(USER):
        return auth_pb2.CredentialChanges(user_ids=[payload[len(USER) :]])
    if payload.startswith(TOKEN):
        return auth_pb2.CredentialChanges(token_ids=[payload[len(TOKEN) :]])
    if payload == ALL:
        return auth_pb2.CredentialChanges(all_credentials=True)
    return None


class Subscription:
    """One subscriber's notices, in order; iterating raises FeedUnavailable once the feed ends it."""

    def __init__(self, max_pending: int) -> None:
        self._queue: asyncio.Queue[auth_pb2.CredentialChanges | None] = asyncio.Queue(max_pending + 1)
        self._max_pending = max_pending
        self.ended = False

    def send(self, change: auth_pb2.CredentialChanges) -> None:
        if self.ended:
            return
        if self._queue.qsize() >= self._max_pending:
            # A subscriber this far behind has to start afresh rather than miss a notice.
            logger.warning("credential feed subscriber fell %s notices behind; ending it", self._max_pending)
            self.end()
            return
        self._queue.put_nowait(change)

    def end(self) -> None:
        """End the stream at once: what is still queued is dropped, since the subscriber starts afresh."""
        if not self.ended:
            self.ended = True
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> auth_pb2.CredentialChanges:
        change = await self._queue.get()
        if change is None:
            raise FeedUnavailable
        return change


class ChangeFeed:
    """One LISTEN connection of this process, fanned out to every WatchCredentials stream."""

    def __init__(self, dsn: str, heartbeat_s: float = 1.0, max_pending: int = 10_000) -> None:
        self._dsn = dsn
        self.heartbeat_s = heartbeat_s
        self._max_pending = max_pending
        self._subscribers: set[Subscription] = set()
        self._listening = False
        self._conn: asyncpg.Connection | None = None
        # Within this process (auth's own memory of accounts, `genai_auth.remembered`): each change as it
        # is heard, and each time the feed starts listening (notices may have been missed before).
        self.on_change: list[Callable[[auth_pb2.CredentialChanges], None]] = []
        self.on_listening: list[Callable[[], None]] = []

    @property
    def heartbeat_ms(self) -> int:
        return int(self.heartbeat_s * 1000)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        """Notices from now on; raises FeedUnavailable at once when the feed is not listening."""
        if not self._listening:
            raise FeedUnavailable
        subscription = Subscription(self._max_pending)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def _broadcast(self, change: auth_pb2.CredentialChanges) -> None:
        for subscription in list(self._subscribers):
            subscription.send(change)

    def _on_notice(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        change = parse_notice(payload)
        if change is None:
            logger.warning("ignoring a credential notice of unknown shape")
            return
        for observer in self.on_change:
            observer(change)
        self._broadcast(change)

    def _on_termination(self, conn: asyncpg.Connection) -> None:
        # Only for the connection in use: a late call about an earlier one must not end the new streams.
        if conn is self._conn:
            self._end_all()

    def _end_all(self) -> None:
        self._listening = False
        for subscription in list(self._subscribers):
            subscription.end()
        self._subscribers.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen and send heartbeats until `stop`; after a failure, end every stream and listen again."""
        backoff = FIRST_BACKOFF_S
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
                )
                # A connection that drops ends the streams at once, not at the next heartbeat.
                self._conn = conn
                conn.add_termination_listener(self._on_termination)
                await conn.add_listener(CHANNEL, self._on_notice)
                self._listening = True
                for observer in self.on_listening:
                    observer()
                while not stop.is_set():
                    # Notices committed before this round trip have been delivered once it returns, so the
                    # heartbeat after it vouches for everything before it. No longer than a heartbeat:
                    # the streams end before their subscribers' patience (three heartbeats) runs out.
                    await conn.fetchval("SELECT 1", timeout=self.heartbeat_s)
                    self._broadcast(auth_pb2.CredentialChanges(heartbeat_ms=self.heartbeat_ms))
                    if backoff > FIRST_BACKOFF_S:
                        logger.info("credential feed listening again")
                        backoff = FIRST_BACKOFF_S
                    with contextlib.suppress(TimeoutError):
                        await within(stop.wait(), self.heartbeat_s)
            except Exception as exc:  # noqa: BLE001 (whatever broke the connection, listen again)
                logger.warning("credential feed lost its database connection: %s", exc.__class__.__name__)
            finally:
                self._end_all()
                if conn is not None:
                    conn.terminate()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await within(stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
