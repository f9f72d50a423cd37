"""Authenticate answers kept for a few seconds, so that most requests skip a call to the auth service.

An answer is used again only while nothing can have changed it unseen:

- the auth service's change feed (WatchCredentials) is heard: every logout (of the whole session, every
  token its refreshes issued), revoked key, disabled, reset, re-roled or deleted user and new limits, from
  any gateway, auth process or genai-auth-admin, arrives on it as it is committed, and the answers it names
  are forgotten. When the stream breaks, everything is forgotten; when it falls silent for a few
  heartbeats, nothing is used until it speaks again;
- a change made through this gateway forgets everything before its reply leaves (ForgetOnChange), so that
  the caller's next request never beats the feed;
- the answer is younger than the TTL, and its credential has not expired.

An answer that was on its way while a change arrived is not kept: it may predate the change. Nor is one
about a credential that a notice named less than a TTL ago: a logout is announced as PostgreSQL commits it,
a moment before auth's Redis copy of the revocations has it, and an answer from that moment would say
"valid"; asking auth each time for a while costs little, caching that answer would keep it for the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from prometheus_client import Counter

logger = logging.getLogger(__name__)

LOOKUPS = Counter("genai_gateway_auth_cache_lookups_total", "Credential checks, by result", ["result"])
# Bound once: every request counts one of them.
HITS, MISSES = LOOKUPS.labels("hit"), LOOKUPS.labels("miss")
# How many heartbeats may go unheard before the cache stops trusting itself.
SILENT_HEARTBEATS = 3
MAX_BACKOFF_S = 5.0
# Credentials named by a notice are not cached for at least this long (or the TTL, if longer).
RECENT_MIN_S = 5.0
# Errors after which nothing can have changed: the cache is kept (so failed calls cannot flush it).
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Auth RPCs that cannot change an Authenticate answer; after any other, everything cached is forgotten.
# (Refresh spends a refresh token, which Authenticate never accepts.)
READ_ONLY_METHODS = frozenset(
    {"Authenticate", "Login", "Refresh", "ListUsers", "ListApiKeys", "CreateUser", "CreateApiKey"}
)


@dataclass(frozen=True)
class _Entry:
    principal: auth_pb2.Principal
    fresh_until: float  # on the monotonic clock


def _key(token: str) -> bytes:
    # Not the token itself: a memory dump of the gateway then shows no usable credentials.
    return hashlib.sha256(token.encode()).digest()


class CredentialCache:
    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[bytes, _Entry] = {}
        # Bumped by every change heard: an answer asked for before a bump is not kept.
        self._generation = 0
        # User and token ids named by notices -> until when answers about them are not kept (monotonic).
        self._recent: dict[str, float] = {}
        # When the feed last spoke (monotonic), and how long a silence it may keep; None: not subscribed.
        self._heard_at: float | None = None
        self._silence_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    @property
    def trusted(self) -> bool:
        """Whether the feed is heard, so that a cached answer cannot have been changed unseen."""
        return self._heard_at is not None and self._clock() - self._heard_at < self._silence_s

    @property
    def state(self) -> str:
        """For /health: whether requests are being spared the Authenticate call."""
        if not self.enabled:
            return "disabled"
        return "on" if self.trusted else "off: auth's change feed is not heard, every request asks auth"

    def __len__(self) -> int:
        return len(self._entries)

    # --- answers ---------------------------------------------------------------------------------

    def get(self, token: str) -> auth_pb2.Principal | None:
        if not self.trusted:
            return None
        key = _key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at = entry.principal.expires_at
        if self._clock() >= entry.fresh_until or (expires_at and self._wall_clock() >= expires_at):
            del self._entries[key]
            return None
        return entry.principal

    def put(self, token: str, principal: auth_pb2.Principal, generation: int) -> None:
        """Keep an answer asked for at `generation`, unless the rules above say it may be stale."""
        if (
            not self.enabled
            or generation != self._generation
            or not self.trusted
            # From an auth that names no credential id, a notice could not be matched to it.
            or not principal.token_id
            or self._named_lately(principal.user_id)
            or self._named_lately(principal.token_id)
            or (principal.session_id and self._named_lately(principal.session_id))
        ):
            return
        if len(self._entries) >= self.max_entries:
            self._evict()
        self._entries[_key(token)] = _Entry(principal, self._clock() + self.ttl_s)

    def _named_lately(self, credential: str) -> bool:
        until = self._recent.get(credential)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._recent[credential]
        return False

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.fresh_until <= now]:
            del self._entries[key]
        # Still full: the oldest quarter goes (dicts keep insertion order).
        if len(self._entries) >= self.max_entries:
            for key in list(self._entries)[: max(1, self.max_entries // 4)]:
                del self._entries[key]

    @property
    def generation(self) -> int:
        return self._generation

    async def authenticate(
        self, stub: auth_pb2_grpc.AuthServiceStub, token: str, timeout_s: float
    ) -> auth_pb2.Principal:
        """Who the token belongs to: from the cache when it may be trusted, else from the auth service.

        Raises grpc.aio.AioRpcError as the Authenticate call does.
        """
        principal = self.get(token)
        if principal is not None:
            HITS.inc()
            return principal
        MISSES.inc()
        generation = self._generation
        principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=token), timeout=timeout_s)
        self.put(token, principal, generation)
        return principal

    # --- changes ---------------------------------------------------------------------------------

    def forget(self, user_ids: Sequence[str] = (), token_ids: Sequence[str] = ()) -> None:
        self._generation += 1
        users, tokens = set(user_ids), set(token_ids)
        now = self._clock()
        until = now + max(self.ttl_s, RECENT_MIN_S)
        for credential in users | tokens:
            self._recent[credential] = until
        if len(self._recent) > self.max_entries:
            self._recent = {k: v for k, v in self._recent.items() if v > now}
        for key in [
            k
            for k, e in self._entries.items()
            # A session's end names its chain, which every token of that sign-in shares.
            if e.principal.user_id in users
            or e.principal.token_id in tokens
            or e.principal.session_id in tokens
        ]:
            del self._entries[key]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def heard(self, change: auth_pb2.CredentialChanges) -> None:
        """Apply one message of the feed; any message also says the feed is sound."""
        if not self.trusted:
            # Changes made while the feed was not heard were missed: answers asked for before now may
            # predate them.
            self.clear()
        if change.all_credentials:
            self.clear()
        elif change.user_ids or change.token_ids:
            self.forget(change.user_ids, change.token_ids)
        if change.heartbeat_ms:
            self._silence_s = SILENT_HEARTBEATS * change.heartbeat_ms / 1000
        self._heard_at = self._clock()

    def lost(self) -> None:
        """The feed's stream ended: changes may be missed from now on."""
        self._heard_at = None
        self.clear()

    async def follow(self, stub: auth_pb2_grpc.AuthServiceStub) -> None:
        """Listen to the auth service's change feed for as long as the gateway runs."""
        backoff = 0.2
        while True:
            call = stub.WatchCredentials(auth_pb2.WatchCredentialsRequest())
            try:
                async for change in call:
                    if self._heard_at is None:
                        logger.info("credential change feed heard; caching Authenticate answers")
                    self.heard(change)
                    backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                if self._heard_at is not None:
                    logger.warning(
                        "credential change feed lost (%s); asking auth every time", exc.code().name
                    )
            except Exception:
                logger.exception("credential change feed failed; asking auth every time")
            finally:
                call.cancel()
                self.lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


class ForgetOnChange(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """On the auth channel: after a call that may change credentials, forget every cached answer.

    Done before the call's reply reaches the code that made it, so the caller's next request (say, with
    the API key just revoked) cannot find the old answer, whichever of it and the feed's notice is first.
    """

    def __init__(self, cache: CredentialCache) -> None:
        self._cache = cache

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        call = await continuation(client_call_details, request)
        if name in READ_ONLY_METHODS:
            return call
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            # Refused outright: nothing changed. Anything else (a deadline, a lost connection) may
            # have come after the change was committed.
            if exc.code() not in _REFUSED:
                self._cache.clear()
            raise
        except BaseException:
            # Cancelled (the client left): the change may still have been made.
            self._cache.clear()
            raise
        self._cache.clear()
        return call
