"""Accounts as last read from PostgreSQL, so that signed-in users keep working while it is down or hung.

An access token is checked without PostgreSQL except for one step: its user's account (does the user
still exist, are they disabled, their role and limits, a password reset since the token was issued). The
signature and expiry are checked from the token itself, and revocations from their Redis copy
(`genai_auth.revocation`, which falls back to PostgreSQL only when that copy cannot be sure, and then
refuses with UNAVAILABLE like any other query). So during an outage the account is taken from here:

- an account is remembered each time it is read, for at most `trust_s` after that read
  (GENAI_AUTH_OUTAGE_TRUST_S); 0 remembers nothing, and every request of an outage is refused (503);
- an account is also remembered at sign-in and renewal, so that a session that has just begun goes on;
- a change to an account or a credential, committed by anyone, is announced on the credential feed
  (`genai_auth.changes`), and the accounts it names are forgotten (and read again at once);
- when the feed starts listening again after losing its connection, what was read before is not used
  until read again (at once, in the background): a notice may have been missed in between;
- so what a remembered account can miss is a change committed while this process could not hear the
  feed, which is what `trust_s` bounds: the documented staleness of a role or disabled flag during an
  outage;
- while PostgreSQL is failing, a remembered account is used without asking it (for `cooldown_s` after
  each failure), so that a hung database does not cost every request the lookup's timeout. A lookup
  never waits longer than `timeout_s`: the gateway's deadline is longer, so the fallback answers in time.

API keys are not remembered: a key revoked just before the outage could not be told from a valid one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from genai.auth.v1 import auth_pb2
from prometheus_client import Counter

from genai_auth.users import User, UserStore
from genai_common.db import DATABASE_ERRORS, DatabaseState

logger = logging.getLogger(__name__)

FALLBACKS = Counter(
    "genai_auth_outage_accounts_total",
    "Token checks answered from an account as last read, because PostgreSQL did not answer",
)


@dataclass(frozen=True)
class _Remembered:
    user: User
    read_at: float  # monotonic


class RememberedUsers:
    """`get_by_id` of the user store, answered from the last read while PostgreSQL fails."""

    def __init__(
        self,
        users: UserStore,
        *,
        trust_s: float,
        timeout_s: float = 1.0,
        cooldown_s: float = 2.0,
        max_entries: int = 100_000,
        state: DatabaseState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = users
        self.trust_s = trust_s
        self._timeout_s = timeout_s
        self._cooldown_s = cooldown_s
        self._max_entries = max_entries
        self._state = state or DatabaseState()
        self._clock = clock
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()
        self._failing_until = 0.0
        self._rereads: set[asyncio.Task[None]] = set()
        # Accounts read before this moment (the feed's last start) are not used (`listening`).
        self._valid_from = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    # --- the credential feed ------------------------------------------------------------------------

    def heard(self, change: auth_pb2.CredentialChanges) -> None:
        """Forget what a change names; an account that was remembered is read again at once (the database
        just committed the change, so it answers), so that its session survives an outage right after."""
        if change.all_credentials:
            self._entries.clear()
        for user_id in change.user_ids:
            if self._entries.pop(user_id, None) is not None:
                task = asyncio.create_task(self._reread(user_id))
                self._rereads.add(task)
                task.add_done_callback(self._rereads.discard)

    async def _reread(self, user_id: str) -> None:
        try:
            await self.get_by_id(user_id)
        except DATABASE_ERRORS:
            pass  # Asked again by the next token check.

    def listening(self) -> None:
        """The feed listens again: a notice may have been missed while it did not, so what was read before
        now is not trusted until read again, which starts at once (the database answers the feed)."""
        self._valid_from = self._clock()
        stale = list(self._entries)
        if stale:
            task = asyncio.create_task(self._reread_all(stale))
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)

    async def _reread_all(self, user_ids: list[str]) -> None:
        for user_id in user_ids:
            try:
                await self.get_by_id(user_id)
            except DATABASE_ERRORS:
                return  # The database failed again: those not read stay untrusted.

    # --- lookups ------------------------------------------------------------------------------------

    def _recall(self, user_id: str) -> User | None:
        entry = self._entries.get(user_id)
        if entry is None or entry.read_at < self._valid_from:
            return None
        if self._clock() - entry.read_at > self.trust_s:
            del self._entries[user_id]
            return None
        return entry.user

    def remember(self, user: User) -> None:
        """An account just read by another path (a sign-in): its session can start before any lookup."""
        self._keep(user)

    def _keep(self, user: User) -> None:
        if self.trust_s <= 0:
            return
        key = str(user.id)
        self._entries[key] = _Remembered(user, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def _lookup(self, user_id: str) -> User | None:
        """The store's lookup, given up after `timeout_s` without waiting for it to wind down: a query
        cancelled on a hung server can take long to let go (it stops in the background)."""
        lookup = asyncio.ensure_future(self._users.get_by_id(user_id))
        done, _ = await asyncio.wait({lookup}, timeout=self._timeout_s)
        if not done:
            lookup.cancel()
            lookup.add_done_callback(_quietly)
            raise TimeoutError(f"no answer from PostgreSQL within {self._timeout_s} s")
        return lookup.result()

    async def get_by_id(self, user_id: str) -> User | None:
        """The account, from PostgreSQL; as last read when PostgreSQL fails and it was read recently
        enough; raises the database's error otherwise."""
        remembered = self._recall(user_id)
        if remembered is not None and self._clock() < self._failing_until:
            FALLBACKS.inc()
            return remembered
        try:
            user = await self._lookup(user_id)
        except DATABASE_ERRORS as exc:
            self._failing_until = self._clock() + self._cooldown_s
            self._state.failed(exc)
            if remembered is None:
                raise
            FALLBACKS.inc()
            return remembered
        self._failing_until = 0.0
        if user is None:
            self._entries.pop(user_id, None)
        else:
            self._keep(user)
        return user


def _quietly(task: asyncio.Future[User | None]) -> None:
    """Collect a given-up lookup's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
