"""Sign-in against an LDAP directory (Active Directory, FreeIPA, OpenLDAP): the client that asks it.

How a directory login goes: a pooled connection, bound as the service account, searches the user by the
configured login attribute (the filter built with RFC 4515 escaping, never pasted); the user's own bind on
that connection checks the password; the groups come from the entry's memberOf or, for Active Directory's
nested groups, from one search with the matching rule LDAP_MATCHING_RULE_IN_CHAIN; then the connection is
bound as the service account again and goes back to the pool.

| what happens                                        | outcome                                  |
|-----------------------------------------------------|------------------------------------------|
| no entry, several entries, or a referral only       | `None` (the caller says: wrong password) |
| the user's bind answers invalidCredentials (49)     | `None` (also AD's disabled/expired/locked)|
| empty password                                      | `None`, without a bind: an LDAP simple   |
|                                                     | bind with no password is anonymous and   |
|                                                     | "succeeds" (RFC 4513 5.1.2)              |
| connect/TLS/read timeout, refused, socket closed,   | DirectoryUnavailable                     |
| the service account's bind refused, busy, etc.      |                                          |

The library is ldap3 (pure Python, so nothing to compile on Red OS or in the slim images; synchronous),
driven from a thread pool of the pool's size: each connection is used by one thread at a time. Every
operation has the timeout of the settings, and the whole call one more bound on top (asyncio.wait_for),
so a directory that accepts TCP and then says nothing costs a caller at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException

from genai_auth.directory import DirectoryConfig, DirectoryUnavailable, DirectoryUser
from genai_common.waiting import within

logger = logging.getLogger(__name__)

# userAccountControl's ACCOUNTDISABLE bit.
AD_ACCOUNT_DISABLED = 0x2
INVALID_CREDENTIALS = 49


class LdapConnection(Protocol):
    """What this module uses of ldap3.Connection; unit tests give recorded answers through it."""

    result: dict[str, Any]
    response: list[dict[str, Any]] | None
    closed: bool

    def search(self, search_base: str, search_filter: str, **kwargs: Any) -> Any: ...
    def rebind(self, user: str | None = None, password: str | None = None, **kwargs: Any) -> Any: ...
    def unbind(self) -> Any: ...


def _entries(conn: LdapConnection) -> list[dict[str, Any]]:
    # AD answers searches from a domain's root with continuation references (searchResRef) to other
    # partitions besides the entries; referrals are not chased (auto_referrals off), so they are skipped.
    return [item for item in conn.response or () if item.get("type") == "searchResEntry"]


def _values(entry: Mapping[str, Any], name: str) -> list[str]:
    attributes = entry.get("attributes") or {}
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if value is None:
                return []
            return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
    return []


def _lost(conn: LdapConnection) -> bool:
    """Whether a failed operation means the connection (or the directory) is gone, not a refusal."""
    return bool(conn.closed) or (conn.result or {}).get("result") in (None, 51, 52, 80, 81, 85, 91)


class DirectoryClient:
    """One directory, asked over a pool of connections bound as the service account."""

    def __init__(
        self,
        config: DirectoryConfig,
        *,
        connect: Callable[[], LdapConnection] | None = None,
    ) -> None:
        config.check()
        self._config = config
        self._connect = connect or self._open
        self._idle: list[LdapConnection] = []
        self._executor = ThreadPoolExecutor(max_workers=config.pool_size, thread_name_prefix="ldap")
        self._slots = asyncio.Semaphore(config.pool_size)

    @property
    def config(self) -> DirectoryConfig:
        return self._config

    # --- connections ------------------------------------------------------------------------------

    def _server(self) -> ldap3.Server:
        parts = urlsplit(self._config.url)
        tls = None
        if self._config.secure:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=self._config.ca_file or None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        use_ssl = parts.scheme.lower() == "ldaps"
        return ldap3.Server(
            parts.hostname or "",
            port=parts.port or (636 if use_ssl else 389),
            use_ssl=use_ssl,
            tls=tls,
            connect_timeout=self._config.timeout_s,
            get_info=ldap3.NONE,
        )

    def _open(self) -> LdapConnection:
        conn = ldap3.Connection(
            self._server(),
            user=self._config.bind_dn or None,
            password=self._config.bind_password or None,
            # Whole seconds: ldap3 packs it into a socket option as an integer.
            receive_timeout=max(1, math.ceil(self._config.timeout_s)),
            auto_referrals=False,
            raise_exceptions=False,
            read_only=True,
            client_strategy=ldap3.SYNC,
        )
        try:
            conn.open()
            if self._config.start_tls and not conn.start_tls():
                raise DirectoryUnavailable(f"StartTLS refused: {conn.result.get('description')}")
            if not conn.bind():
                raise DirectoryUnavailable(
                    f"the service account's bind was refused: {conn.result.get('description')}"
                )
        except LDAPException as exc:
            conn.unbind()
            raise DirectoryUnavailable(f"cannot connect: {exc}") from exc
        except DirectoryUnavailable:
            conn.unbind()
            raise
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[LdapConnection]:
        """A bound connection for one thread: an idle one, or a new one. Given back only if it is still
        bound as the service account; dropped on any error."""
        conn = self._idle.pop() if self._idle else self._connect()
        ok = False
        try:
            yield conn
            ok = not conn.closed
        finally:
            if ok:
                self._idle.append(conn)
            else:
                with contextlib.suppress(Exception):
                    conn.unbind()

    def _with_retry(self, work: Callable[[LdapConnection], Any]) -> Any:
        """Run `work` on a pooled connection; once more on a new one if the pooled one turned out dead
        (the directory restarted, or an idle timeout closed it)."""
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return work(conn)
            except _Lost as exc:
                if attempt == 2:
                    raise DirectoryUnavailable(str(exc)) from None
            except LDAPException as exc:
                if attempt == 2:
                    raise DirectoryUnavailable(f"directory error: {exc}") from exc
        raise AssertionError("unreachable")

    async def _run(self, work: Callable[[LdapConnection], Any]) -> Any:
        # One bound for the whole call: connect, TLS, bind, search and the user's bind each have the
        # timeout, so a few of them in a row could otherwise add up.
        budget = self._config.timeout_s * 2
        async with self._slots:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self._with_retry, work)
            try:
                return await within(asyncio.shield(future), budget)
            except TimeoutError:
                # The thread finishes on its own (each step has its timeout); its outcome is dropped.
                future.add_done_callback(lambda done: done.exception())
                raise DirectoryUnavailable(f"no answer within {budget:g} s") from None

    def close(self) -> None:
        while self._idle:
            with contextlib.suppress(Exception):
                self._idle.pop().unbind()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- operations (in a pool thread) -------------------------------------------------------------

    def _find(self, conn: LdapConnection, username: str) -> dict[str, Any] | None:
        attributes = [self._config.login_attribute, "memberOf", "userAccountControl"]
        ok = conn.search(
            self._config.user_base_dn,
            self._config.user_search_filter(username),
            search_scope=ldap3.SUBTREE,
            attributes=attributes,
            size_limit=2,
            time_limit=max(1, int(self._config.timeout_s)),
        )
        if not ok and _lost(conn):
            raise _Lost(f"user search failed: {conn.result.get('description')}")
        entries = _entries(conn)
        # Two entries for one login name: a directory mistake; signing in as either would be a guess.
        if len(entries) != 1:
            if len(entries) > 1:
                logger.warning("directory: %s entries match one login name; refused", len(entries))
            return None
        return entries[0]

    def _groups(self, conn: LdapConnection, entry: Mapping[str, Any]) -> tuple[str, ...]:
        if not self._config.nested_groups:
            return tuple(_values(entry, "memberOf"))
        ok = conn.search(
            self._config.group_base_dn,
            self._config.nested_group_filter(str(entry["dn"])),
            search_scope=ldap3.SUBTREE,
            attributes=["distinguishedName"],
            time_limit=max(1, int(self._config.timeout_s)),
        )
        if not ok and _lost(conn):
            raise _Lost(f"group search failed: {conn.result.get('description')}")
        return tuple(str(item["dn"]) for item in _entries(conn))

    def _user(self, conn: LdapConnection, entry: Mapping[str, Any], username: str) -> DirectoryUser:
        login = (_values(entry, self._config.login_attribute) or [self._config.login_value(username)])[0]
        control = _values(entry, "userAccountControl")
        disabled = bool(control and control[0].isdigit() and int(control[0]) & AD_ACCOUNT_DISABLED)
        return DirectoryUser(str(entry["dn"]), login, self._groups(conn, entry), disabled)

    def _authenticate(self, conn: LdapConnection, username: str, password: str) -> DirectoryUser | None:
        entry = self._find(conn, username)
        if entry is None:
            return None
        try:
            accepted = bool(conn.rebind(user=str(entry["dn"]), password=password))
        except LDAPBindError as exc:
            raise _Lost(f"the user's bind failed: {exc}") from None
        code = (conn.result or {}).get("result")
        try:
            if not accepted and code != INVALID_CREDENTIALS:
                raise _Lost(f"the user's bind failed: {(conn.result or {}).get('description')}")
            if not accepted:
                return None
            user = self._user(conn, entry, username)
        finally:
            self._restore(conn)
        return user

    def _restore(self, conn: LdapConnection) -> None:
        """Bind as the service account again before the connection is reused."""
        try:
            conn.rebind(user=self._config.bind_dn or None, password=self._config.bind_password or None)
        except LDAPException:
            with contextlib.suppress(Exception):
                conn.unbind()
            conn.closed = True

    def _lookup(self, conn: LdapConnection, username: str) -> DirectoryUser | None:
        entry = self._find(conn, username)
        return None if entry is None else self._user(conn, entry, username)

    # --- the API ------------------------------------------------------------------------------------

    async def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        """The user if the directory knows the name and accepts the password; None otherwise. Raises
        DirectoryUnavailable when it cannot tell."""
        if not password or not username.strip():
            return None
        result: DirectoryUser | None = await self._run(
            lambda conn: self._authenticate(conn, username, password)
        )
        return result

    async def lookup(self, username: str) -> DirectoryUser | None:
        """The user's entry and groups as they are now (no password: a session being renewed); None if
        the entry is gone. Raises DirectoryUnavailable."""
        result: DirectoryUser | None = await self._run(lambda conn: self._lookup(conn, username))
        return result


class _Lost(Exception):
    """The connection or the directory failed mid-operation (not a refusal of the credentials)."""
