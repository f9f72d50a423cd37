"""The genai.auth.v1.AuthService RPCs."""

from __future__ import annotations

import base64
import binascii
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

import asyncpg
import grpc
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from redis.asyncio import Redis

from genai_auth.api_keys import (
    ApiKey,
    ApiKeyStore,
    CreatedApiKey,
    Cursor,
    InvalidApiKey,
    TooManyKeys,
    looks_like_api_key,
)
from genai_auth.changes import ChangeFeed, FeedUnavailable
from genai_auth.directory import DirectoryUnavailable, DirectoryUser, GroupGrant, combine
from genai_auth.limiter import Attempt, LoginLimiter
from genai_auth.limits import InvalidLimits, dump_limits, parse_limits
from genai_auth.passwords import Passwords
from genai_auth.remembered import RememberedUsers
from genai_auth.revocation import RevocationList
from genai_auth.settings import AuthSettings
from genai_auth.telegram import CHAT_SCOPE, InvalidCode, TelegramLink, TelegramLinks
from genai_auth.tokens import ACCESS, REFRESH, Claims, InvalidToken, IssuedPair, Tokens
from genai_auth.users import (
    DirectoryManaged,
    InvalidInput,
    LastAdmin,
    User,
    UserExists,
    UserStore,
    check_password,
)
from genai_common.db import DatabaseState
from genai_common.grpc_server import CALLER_MESSAGE, NO_RETRY
from genai_common.redis_guard import RedisGuard

if TYPE_CHECKING:
    from genai_auth.directory_client import DirectoryClient

logger = logging.getLogger(__name__)

SERVICE_NAME = "genai.auth.v1.AuthService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# Deliberately vague: which check refused a token is logged at debug, never told to the caller.
INVALID_TOKEN = "invalid or expired token"  # noqa: S105 (a message, not a credential)
BAD_CREDENTIALS = "incorrect username or password"
# The directory's answers as the caller reads them (see docs/operations.md, "LDAP / Active Directory").
DIRECTORY_DOWN = (
    "the directory (LDAP/AD) is not answering, so directory accounts cannot sign in right now; "
    "try again in a minute (local accounts are not affected)"
)
NO_MAPPED_GROUP = (
    "your directory account is valid, but none of your directory groups gives access to this service; "
    "ask your administrator to add you to one"
)
DIRECTORY_ACCESS_ENDED = (
    "your directory account or groups no longer give access to this service; sign in again"
)
PASSWORD_NEEDED = (
    'creating an API key or a Telegram link needs your password ("password"), or a sign-in with it in the '  # noqa: S105
    "last few minutes"
)
PASSWORD_WRONG = "the password is incorrect"  # noqa: S105 (a message, not a credential)
DIRECTORY_MANAGED = "this is a directory account: its password and role are managed in the directory"
DIRECTORY_RETRY_AFTER_S = 30
CHAT_ONLY = "this API key may only chat and read its user's history"
# ListApiKeysRequest.owner_username that means every user's keys.
ALL_OWNERS = "*"

# What a Redis outage means here, for the logs.
REDIS_DEGRADED = "auth degraded: revocations checked in PostgreSQL, login attempts counted per process"


def _user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=int(user.created_at.timestamp()),
        limits_json=dump_limits(user.limits),
        source=user.source,
        directory_groups=list(user.directory_groups),
        directory_limits_json=dump_limits(user.directory_limits),
        directory_checked_at=_seconds(user.directory_checked_at),
    )


def _seconds(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment else 0


def _api_key_message(key: ApiKey) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        id=str(key.id),
        name=key.name,
        prefix=key.prefix,
        owner_username=key.owner_username,
        created_at=_seconds(key.created_at),
        last_used_at=_seconds(key.last_used_at),
        revoked=key.revoked,
        expires_at=_seconds(key.expires_at),
        scope=key.scope,
    )


def _created_api_key_message(created: CreatedApiKey) -> auth_pb2.CreatedApiKey:
    return auth_pb2.CreatedApiKey(key=_api_key_message(created.key), secret=created.secret)


@dataclass(frozen=True)
class Caller:
    """Who presented a credential: the live user, when the credential expires (0: never) and, for an
    API key, which one."""

    user: User
    expires_at: int
    # The credential's own id: the access token's jti, or the API key's id.
    token_id: str
    api_key_id: str = ""
    # For an access token: when its user last gave their password (0: unknown, or an API key).
    auth_time: int = 0
    # An API key's scope; empty for an access token.
    scope: str = ""
    # An access token's session chain; empty for an API key.
    session_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.user.role == "admin"


def _telegram_link_message(link: TelegramLink) -> auth_pb2.TelegramLink:
    return auth_pb2.TelegramLink(
        id=str(link.id),
        owner_username=link.owner_username,
        telegram_user_id=link.telegram_user_id,
        telegram_username=link.telegram_username,
        created_at=_seconds(link.created_at),
        revoked=link.revoked,
        api_key_id=str(link.api_key_id),
    )


def _token_pair(pair: IssuedPair, expires_in: int) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type="bearer",  # noqa: S106 (the token scheme, not a credential)
        expires_in=expires_in,
        role=pair.access.role,
        username=pair.access.username,
    )


def _encode_page_token(username: str) -> str:
    return base64.urlsafe_b64encode(username.lower().encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> str:
    raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    return raw.decode()


def _directory_client(settings: AuthSettings) -> DirectoryClient | None:
    """The directory's client when sign-in through one is configured; ldap3 is imported only then."""
    if not settings.ldap_url:
        return None
    from genai_auth.directory_client import DirectoryClient

    return DirectoryClient(settings.directory_config())


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Logins, JWT sessions (issue, refresh, revoke, verify), API keys and user administration."""

    def __init__(
        self,
        *,
        users: UserStore,
        api_keys: ApiKeyStore,
        tokens: Tokens,
        revocations: RevocationList,
        limiter: LoginLimiter,
        feed: ChangeFeed | None = None,
        api_key_default_ttl_s: int = 90 * 86_400,
        api_key_fresh_login_s: int = 300,
        directory: DirectoryClient | None = None,
        group_grants: dict[str, GroupGrant] | None = None,
        unmapped_role: str | None = None,
        directory_session_s: int = 300,
        accounts: RememberedUsers | None = None,
        telegram_code_ttl_s: int = 600,
    ) -> None:
        self._telegram = TelegramLinks(api_keys)
        self._telegram_code_ttl_s = telegram_code_ttl_s
        self._api_key_default_ttl_s = api_key_default_ttl_s
        self._api_key_fresh_login_s = api_key_fresh_login_s
        self._directory = directory
        self._group_grants = group_grants or {}
        self._unmapped_role = unmapped_role
        self._directory_session_s = directory_session_s
        # Answers the account lookups of token checks while PostgreSQL is down (genai_auth.remembered).
        self._accounts = accounts if accounts is not None else RememberedUsers(users, trust_s=0)
        self._users = users
        self._feed = feed
        self._api_keys = api_keys
        self._tokens = tokens
        self._revocations = revocations
        self._limiter = limiter

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        pool: asyncpg.Pool,
        client: Redis,
        feed: ChangeFeed | None = None,
        database: DatabaseState | None = None,
    ) -> AuthServicer:
        """The servicer of one process; its Redis guard is shared by revocations and login throttling,
        so a failure seen by either spares the other the timeout. `database` hears the failures of the
        account lookups that a PostgreSQL outage is answered from memory for."""
        guard = RedisGuard(settings.redis_cooldown_s, degraded_note=REDIS_DEGRADED)
        users = UserStore(pool, Passwords.from_settings(settings))
        accounts = RememberedUsers(
            users,
            trust_s=settings.outage_trust_s,
            timeout_s=settings.database_timeout_s,
            state=database,
        )
        if feed is not None:
            feed.on_change.append(accounts.heard)
            feed.on_listening.append(accounts.listening)
        return cls(
            accounts=accounts,
            users=users,
            api_keys=ApiKeyStore(pool),
            tokens=Tokens.from_settings(settings),
            revocations=RevocationList(pool, client, guard),
            limiter=LoginLimiter(
                client,
                guard,
                max_per_account=settings.login_max_failures,
                max_per_address=settings.login_max_failures_per_address,
                window_s=settings.login_window_s,
                backoff_max_s=settings.login_backoff_max_s,
            ),
            feed=feed,
            api_key_default_ttl_s=settings.keys_default_ttl_days * 86_400,
            api_key_fresh_login_s=settings.keys_fresh_login_s,
            directory=_directory_client(settings),
            group_grants=settings.group_grants(),
            unmapped_role=None if settings.ldap_unmapped == "refuse" else settings.ldap_unmapped,
            directory_session_s=settings.ldap_session_check_s,
            telegram_code_ttl_s=settings.telegram_code_ttl_s,
        )

    @property
    def revocations(self) -> RevocationList:
        return self._revocations

    def close(self) -> None:
        if self._directory is not None:
            self._directory.close()

    # --- helpers --------------------------------------------------------------------------------

    async def _refuse_token(self, context: grpc.aio.ServicerContext, why: str) -> NoReturn:
        logger.debug("token refused: %s", why)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, INVALID_TOKEN)

    async def _authenticated(
        self, token: str, context: grpc.aio.ServicerContext, typ: str = ACCESS
    ) -> tuple[User, Claims]:
        """The live user behind a valid, unrevoked token of type `typ`; aborts UNAUTHENTICATED otherwise."""
        try:
            claims = self._tokens.decode(token, typ)
        except InvalidToken as exc:
            await self._refuse_token(context, str(exc))
        if await self._revocations.is_revoked(claims.jti, claims.family):
            await self._refuse_token(context, "token or its session chain revoked")
        user = await self._accounts.get_by_id(claims.user_id)
        if user is None:
            await self._refuse_token(context, "user no longer exists")
        if user.disabled:
            await self._refuse_token(context, "user is disabled")
        if user.session_predates_reset(claims.issued_at):
            await self._refuse_token(context, "token issued before a password reset")
        return user, claims

    async def _identify(self, token: str, context: grpc.aio.ServicerContext) -> Caller:
        """The caller behind an access token or an API key; aborts UNAUTHENTICATED if neither is valid."""
        if not looks_like_api_key(token):
            user, claims = await self._authenticated(token, context)
            return Caller(
                user,
                claims.expires_at,
                token_id=claims.jti,
                auth_time=claims.auth_time,
                session_id=claims.family,
            )
        try:
            key, user = await self._api_keys.authenticate(token)
        except InvalidApiKey as exc:
            await self._refuse_token(context, str(exc))
        if user.from_directory and self._directory_check_due(user):
            user = await self._recheck_directory(user, context)
            if key.scope != "admin":
                # As `authenticate` has it: a user-scoped key of an admin acts as a user.
                user = replace(user, role="user")
        return Caller(
            user, _seconds(key.expires_at), token_id=str(key.id), api_key_id=str(key.id), scope=key.scope
        )

    async def _caller(self, context: grpc.aio.ServicerContext, *, allow_chat: bool = False) -> Caller:
        """The caller identified by the "authorization: Bearer ..." metadata. A chat-scoped key (a Telegram
        link's) is refused unless `allow_chat`: it chats, and manages nothing."""
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing bearer token in authorization metadata"
            )
        caller = await self._identify(token.strip(), context)
        if caller.scope == CHAT_SCOPE and not allow_chat:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, CHAT_ONLY)
        return caller

    async def _require_admin(self, context: grpc.aio.ServicerContext) -> User:
        caller = await self._caller(context)
        if not caller.is_admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this operation requires the admin role")
        return caller.user

    async def _listed_owner(
        self, caller: Caller, owner_username: str, context: grpc.aio.ServicerContext, what: str
    ) -> uuid.UUID | None:
        """Whose `what` a listing shows: every user's (ALL_OWNERS, admins only, None) or one owner's."""
        if owner_username != ALL_OWNERS:
            return (await self._key_owner(caller, owner_username, context)).id
        if not caller.is_admin:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"only an admin can list every user's {what}"
            )
        return None

    async def _key_owner(self, caller: Caller, username: str, context: grpc.aio.ServicerContext) -> User:
        """The user whose keys `username` names: the caller when empty; anyone else for an admin only."""
        if not username or username.lower() == caller.user.username.lower():
            return caller.user
        if not caller.is_admin:
            # Said before any lookup, so a non-admin learns nothing about which users exist.
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only an admin can manage other users' API keys"
            )
        owner = await self._users.get_by_username(username)
        if owner is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no user named {username!r}")
        return owner

    async def _confirm_identity(
        self, caller: Caller, password: str, context: grpc.aio.ServicerContext
    ) -> None:
        """A lasting credential is minted only by someone who just proved to be the user: a sign-in with
        the password within api_key_fresh_login_s, or the password given now."""
        fresh = caller.auth_time and time.time() - caller.auth_time <= self._api_key_fresh_login_s
        if not password:
            if fresh:
                return
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, PASSWORD_NEEDED)
        attempt = await self._throttle(context, caller.user.username, "")
        if caller.user.from_directory:
            if self._directory is None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, PASSWORD_WRONG)
            try:
                confirmed = await self._directory.authenticate(caller.user.username, password) is not None
            except DirectoryUnavailable as exc:
                await self._directory_down(context, exc)
        else:
            confirmed = await self._users.check_password(caller.user, password)
        if not confirmed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, PASSWORD_WRONG)
        await self._limiter.succeeded(caller.user.username, "", attempt)

    async def _throttle(self, context: grpc.aio.ServicerContext, username: str, address: str) -> Attempt:
        attempt = await self._limiter.begin(username, address)
        if attempt.wait:
            logger.warning("login throttled (client address %s)", address or "not given")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed login attempts; try again in {attempt.wait} seconds",
                trailing_metadata=(("retry-after", str(attempt.wait)),),
            )
        return attempt

    # --- RPCs -----------------------------------------------------------------------------------

    # --- the directory --------------------------------------------------------------------------

    async def _directory_down(self, context: grpc.aio.ServicerContext, exc: DirectoryUnavailable) -> NoReturn:
        logger.warning("directory unavailable: %s", exc)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            DIRECTORY_DOWN,
            # Every replica asks the same directory: another one would only wait as long again.
            trailing_metadata=(("retry-after", str(DIRECTORY_RETRY_AFTER_S)), CALLER_MESSAGE, NO_RETRY),
        )

    async def _directory_login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext, attempt: Attempt
    ) -> User | None:
        """Sign-in through the directory: None for a wrong password or an unknown name; aborts with 503
        when the directory cannot tell and 403 when the groups give no access."""
        assert self._directory is not None
        try:
            found = await self._directory.authenticate(request.username, request.password)
        except DirectoryUnavailable as exc:
            await self._directory_down(context, exc)
        if found is None or found.disabled:
            return None
        await self._limiter.succeeded(request.username, request.client_address, attempt)
        return await self._directory_grant(found, context)

    def _directory_check_due(self, user: User) -> bool:
        """Whether the directory's last word on a user is older than a directory session may last: their API
        keys then ask it again, as their tokens do when renewed."""
        checked = user.directory_checked_at
        return checked is None or time.time() - checked.timestamp() >= self._directory_session_s

    async def _directory_refused(self, user_id: uuid.UUID) -> None:
        """The directory no longer lets a user in: their sessions end and their API keys are revoked (a
        directory user's keys live only as long as the directory says they may sign in)."""
        await self._users.end_sessions(user_id)
        revoked = await self._api_keys.revoke_all(user_id)
        if revoked:
            logger.info("directory user %s refused: %s api keys revoked", user_id, revoked)

    async def _directory_grant(self, found: DirectoryUser, context: grpc.aio.ServicerContext) -> User:
        """The directory user as provisioned with the grant of their groups now; aborts PERMISSION_DENIED
        (and ends the sessions and revokes the API keys of one provisioned before) when no mapped group gives
        access."""
        grant = combine(self._group_grants, found.groups, self._unmapped_role)
        if grant is None:
            existing = await self._users.get_by_username(found.login)
            if existing is not None and existing.from_directory:
                await self._directory_refused(existing.id)
            logger.info("directory user refused: no mapped group (%s groups)", len(found.groups))
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, NO_MAPPED_GROUP)
        try:
            user = await self._users.save_directory_user(
                found.login, found.dn, grant.role, grant.limits, grant.groups
            )
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"directory login name refused: {exc}")
        if user is None:
            # A local account has that name: it is not the directory's to take over.
            logger.warning("directory login matches a local account's name; refused")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        return user

    async def _recheck_directory(self, user: User, context: grpc.aio.ServicerContext) -> User:
        """A directory user's session is renewed, or their API key used once the last check is old: ask the
        directory whether they still get in, and with which role and limits."""
        if self._directory is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DIRECTORY_ACCESS_ENDED)
        try:
            found = await self._directory.lookup(user.username)
        except DirectoryUnavailable as exc:
            await self._directory_down(context, exc)
        if found is None or found.disabled:
            await self._directory_refused(user.id)
            logger.info("directory user %s is gone or disabled in the directory; sessions ended", user.id)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DIRECTORY_ACCESS_ENDED)
        return await self._directory_grant(found, context)

    def _issue(self, user: User, renewing: Claims | None = None) -> auth_pb2.TokenPair:
        """A token pair of a new session chain, or of the chain of the refresh token `renewing`."""
        # A directory user's access token lives only until the directory must be asked again.
        ttl = self._tokens.access_ttl_s
        if user.from_directory:
            ttl = min(ttl, self._directory_session_s)
        # A session that starts now goes on through a PostgreSQL outage that starts next.
        self._accounts.remember(user)
        pair = self._tokens.issue_pair(
            user_id=str(user.id), username=user.username, role=user.role, access_ttl_s=ttl, renewing=renewing
        )
        return _token_pair(pair, ttl)

    async def _end_chain(self, claims: Claims) -> None:
        """A refresh token was used twice: end its chain, and have gateways forget its cached tokens."""
        await self._revoke_chain(claims)
        user = await self._users.get_by_id(claims.user_id)
        if user is not None:
            await self._users.touch(user.id)
        logger.warning("a refresh token of user %s was reused: its session chain is revoked", claims.user_id)

    async def _revoke_chain(self, claims: Claims) -> None:
        """End a whole session chain: every token of that login and its refreshes. Kept until the last
        token that the chain can have issued has expired."""
        await self._revocations.revoke(claims.family, int(time.time()) + self._tokens.refresh_ttl_s)

    # --- RPCs -----------------------------------------------------------------------------------

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenPair:
        attempt = await self._throttle(context, request.username, request.client_address)
        # A local account (the break-glass admin among them) never depends on the directory.
        known = await self._users.get_by_username(request.username)
        user: User | None
        if self._directory is not None and (known is None or known.from_directory):
            user = await self._directory_login(request, context, attempt)
        else:
            user = await self._users.authenticate(request.username, request.password)
            if user is not None:
                await self._limiter.succeeded(request.username, request.client_address, attempt)
        if user is None:
            logger.info("failed login (client address %s)", request.client_address or "not given")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        # Only now: telling a guesser that an account is disabled would confirm that it exists.
        if user.disabled:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "account disabled")
        logger.info("user %s logged in (%s)", user.id, user.source)
        return self._issue(user)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenPair:
        try:
            spent = self._tokens.decode(request.refresh_token, REFRESH)
        except InvalidToken as exc:
            await self._refuse_token(context, str(exc))
        if await self._revocations.is_revoked(spent.jti):
            # Used before: a thief or the owner holds a copy, and which one cannot be told, so the chain
            # ends for both (RFC 9700, 4.14.2). Harmless after a logout, which ended it already.
            await self._end_chain(spent)
            await self._refuse_token(context, "refresh token already used")
        user, claims = await self._authenticated(request.refresh_token, context, typ=REFRESH)
        if user.from_directory:
            # Before the token is spent: a directory that is down for a moment costs no session.
            user = await self._recheck_directory(user, context)
        if not await self._revocations.revoke_once(claims.jti, claims.expires_at):
            # Used by a concurrent refresh (PostgreSQL decides): the same reuse as above.
            await self._end_chain(claims)
            await self._refuse_token(context, "refresh token already used")
        return self._issue(user, renewing=claims)

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LogoutResponse:
        # Revokes whichever of the two tokens is still valid, so a client whose access token already
        # expired can still end its session by revoking the refresh token.
        to_revoke: list[Claims] = []
        for token, typ in ((request.access_token, ACCESS), (request.refresh_token, REFRESH)):
            if not token:
                continue
            try:
                to_revoke.append(self._tokens.decode(token, typ))
            except InvalidToken as exc:
                logger.debug("logout: %s token ignored: %s", typ, exc)
        if not to_revoke:
            await self._refuse_token(context, "logout without a valid token")
        for claims in to_revoke:
            await self._revocations.revoke(claims.jti, claims.expires_at)
        # The whole session: the chain's other tokens too (an access token renewed in another request).
        for family in {claims.family: claims for claims in to_revoke}.values():
            await self._revoke_chain(family)
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        caller = await self._identify(request.token, context)
        return auth_pb2.Principal(
            user_id=str(caller.user.id),
            username=caller.user.username,
            role=caller.user.role,
            expires_at=caller.expires_at,
            api_key_id=caller.api_key_id,
            limits_json=dump_limits(caller.user.effective_limits),
            token_id=caller.token_id,
            scope=caller.scope,
            session_id=caller.session_id,
        )

    async def WatchCredentials(
        self, request: auth_pb2.WatchCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[auth_pb2.CredentialChanges]:
        if self._feed is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this auth process has no credential feed")
        try:
            async with self._feed.subscribe() as changes:
                # At once, so that the subscriber knows from when on it hears every change.
                yield auth_pb2.CredentialChanges(heartbeat_ms=self._feed.heartbeat_ms)
                async for change in changes:
                    yield change
        except FeedUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the credential change feed is not available")

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        admin = await self._require_admin(context)
        try:
            user = await self._users.create(request.username, request.password, request.role)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UserExists:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"user {request.username!r} already exists")
        logger.info("admin %s created user %s with role %s", admin.id, user.id, user.role)
        return _user_message(user)

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListUsersResponse:
        await self._require_admin(context)
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = None
        if request.page_token:
            try:
                after = _decode_page_token(request.page_token)
            except (binascii.Error, UnicodeDecodeError, ValueError):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
        # One extra row says whether another page follows.
        users = await self._users.list_page(after, size + 1)
        next_token = _encode_page_token(users[size - 1].username) if len(users) > size else ""
        return auth_pb2.ListUsersResponse(
            users=[_user_message(u) for u in users[:size]], next_page_token=next_token
        )

    async def SetUserDisabled(
        self, request: auth_pb2.SetUserDisabledRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        admin = await self._require_admin(context)
        # Also guarantees that at least one enabled admin remains: the one making the call.
        if request.disabled and request.username.lower() == admin.username.lower():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "you cannot disable your own account")
        user = await self._users.set_disabled(request.username, request.disabled)
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "user not found")
        logger.info("admin %s set disabled=%s on user %s", admin.id, user.disabled, user.id)
        return _user_message(user)

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ChangePasswordResponse:
        user, _ = await self._authenticated(request.access_token, context)
        if user.from_directory:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, DIRECTORY_MANAGED)
        try:
            check_password(request.new_password)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"new {exc}")
        # Someone holding a stolen token must not get unlimited guesses at the old password either.
        attempt = await self._throttle(context, user.username, "")
        if not await self._users.check_password(user, request.old_password):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "old password is incorrect")
        await self._limiter.succeeded(user.username, "", attempt)
        # Whoever else holds a session (a stolen refresh token, a forgotten browser) loses it, as after an
        # admin's reset; the caller goes on with the new session returned here.
        await self._users.set_password(user.id, request.new_password, end_sessions=True)
        logger.info("user %s changed their password; their other sessions end", user.id)
        return auth_pb2.ChangePasswordResponse(tokens=self._issue(user))

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreatedApiKey:
        caller = await self._caller(context)
        owner = await self._key_owner(caller, request.owner_username, context)
        if owner.disabled:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"user {owner.username!r} is disabled; enable it first"
            )
        if request.never_expires and request.expires_in_s:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "give expires_in_s or never_expires, not both"
            )
        if request.scope not in ("", "user", "admin"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scope must be 'user' or 'admin'")
        await self._confirm_identity(caller, request.password, context)
        expires_in_s = 0 if request.never_expires else request.expires_in_s or self._api_key_default_ttl_s
        try:
            created = await self._api_keys.create(owner, request.name, expires_in_s, request.scope or "user")
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TooManyKeys as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        logger.info("user %s created api key %s for user %s", caller.user.id, created.key.id, owner.id)
        return _created_api_key_message(created)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListApiKeysResponse:
        caller = await self._caller(context)
        owner_id = await self._listed_owner(caller, request.owner_username, context, "API keys")
        if request.page_size < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = None
        if request.page_token:
            try:
                after = Cursor.decode(request.page_token)
            except ValueError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
        # One extra row says whether another page follows.
        keys = await self._api_keys.list_page(
            owner_id, after=after, limit=size + 1, include_revoked=request.include_revoked
        )
        next_token = ""
        if len(keys) > size:
            next_token = Cursor(keys[size - 1].created_at, keys[size - 1].id).encode()
        return auth_pb2.ListApiKeysResponse(
            keys=[_api_key_message(k) for k in keys[:size]], next_page_token=next_token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeApiKeyResponse:
        caller = await self._caller(context)
        try:
            key_id = uuid.UUID(request.id)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id must be an API key id (a UUID)")
        # A non-admin may only touch their own keys, and someone else's looks exactly like a missing one.
        key = await self._api_keys.revoke(key_id, owner_id=None if caller.is_admin else caller.user.id)
        if key is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "API key not found")
        logger.info("user %s revoked api key %s of user %s", caller.user.id, key.id, key.user_id)
        return auth_pb2.RevokeApiKeyResponse(key=_api_key_message(key))

    async def SetUserLimits(
        self, request: auth_pb2.SetUserLimitsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        admin = await self._require_admin(context)
        try:
            user = await self._users.set_limits(request.username, parse_limits(request.limits_json))
        except InvalidLimits as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "user not found")
        logger.info("admin %s set limits %s on user %s", admin.id, dump_limits(user.limits), user.id)
        return _user_message(user)

    async def ResetPassword(
        self, request: auth_pb2.ResetPasswordRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ResetPasswordResponse:
        admin = await self._require_admin(context)
        try:
            reset = await self._users.reset_password(request.username, request.new_password or None)
        except DirectoryManaged:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, DIRECTORY_MANAGED)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"new {exc}")
        if reset is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "user not found")
        logger.info("admin %s reset the password of user %s", admin.id, reset.user.id)
        return auth_pb2.ResetPasswordResponse(user=_user_message(reset.user), password=reset.generated or "")

    async def SetUserRole(
        self, request: auth_pb2.SetUserRoleRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.User:
        admin = await self._require_admin(context)
        if request.role != "admin" and request.username.lower() == admin.username.lower():
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "you cannot remove your own admin role")
        try:
            user = await self._users.set_role(request.username, request.role)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except DirectoryManaged:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, DIRECTORY_MANAGED)
        except LastAdmin:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "at least one enabled admin must remain")
        if user is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "user not found")
        logger.info("admin %s set role %s on user %s", admin.id, user.role, user.id)
        return _user_message(user)

    # --- Telegram links -------------------------------------------------------------------------

    async def CreateTelegramLinkCode(
        self, request: auth_pb2.CreateTelegramLinkCodeRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TelegramLinkCode:
        caller = await self._caller(context)
        # The code becomes a key that never expires: minted only by someone who just proved to be the user,
        # as an API key is, not by whoever holds a stolen access token.
        await self._confirm_identity(caller, request.password, context)
        code, expires_at = await self._telegram.create_code(caller.user, self._telegram_code_ttl_s)
        logger.info("user %s made a telegram link code", caller.user.id)
        return auth_pb2.TelegramLinkCode(code=code, expires_at=_seconds(expires_at))

    async def RedeemTelegramLinkCode(
        self, request: auth_pb2.RedeemTelegramLinkCodeRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RedeemedTelegramLink:
        if request.telegram_user_id <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "telegram_user_id must be positive")
        try:
            redeemed = await self._telegram.redeem(
                request.code, request.telegram_user_id, request.telegram_username, self._users.get_by_id
            )
        except InvalidCode as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TooManyKeys as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        logger.info(
            "telegram link %s made for user %s (api key %s)",
            redeemed.link.id,
            redeemed.link.user_id,
            redeemed.link.api_key_id,
        )
        return auth_pb2.RedeemedTelegramLink(
            link=_telegram_link_message(redeemed.link), api_key=redeemed.api_key
        )

    async def ListTelegramLinks(
        self, request: auth_pb2.ListTelegramLinksRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListTelegramLinksResponse:
        caller = await self._caller(context)
        owner_id = await self._listed_owner(caller, request.owner_username, context, "Telegram links")
        links = await self._telegram.list(owner_id, include_revoked=request.include_revoked)
        return auth_pb2.ListTelegramLinksResponse(links=[_telegram_link_message(link) for link in links])

    async def RevokeTelegramLink(
        self, request: auth_pb2.RevokeTelegramLinkRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TelegramLink:
        caller = await self._caller(context, allow_chat=True)
        try:
            link_id = uuid.UUID(request.id)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id must be a Telegram link id (a UUID)")
        # Like API keys: someone else's link looks exactly like a missing one. A link's own chat key ends
        # that link only, not its user's others.
        link = await self._telegram.revoke(
            link_id,
            owner_id=None if caller.is_admin else caller.user.id,
            api_key_id=uuid.UUID(caller.api_key_id) if caller.scope == "chat" else None,
        )
        if link is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Telegram link not found")
        logger.info("user %s ended telegram link %s of user %s", caller.user.id, link.id, link.user_id)
        return _telegram_link_message(link)
