"""The genai.auth.v1.AuthService RPCs."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import asyncpg
import grpc
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from genai_auth.limiter import LoginLimiter
from genai_auth.passwords import Passwords
from genai_auth.revocation import RevocationList
from genai_auth.settings import AuthSettings
from genai_auth.tokens import ACCESS, REFRESH, Claims, InvalidToken, IssuedPair, Tokens
from genai_auth.users import InvalidInput, User, UserExists, UserStore, check_password

logger = logging.getLogger(__name__)

SERVICE_NAME = "genai.auth.v1.AuthService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200

# Deliberately vague: which check refused a token is logged at debug, never told to the caller.
INVALID_TOKEN = "invalid or expired token"  # noqa: S105 (a message, not a credential)
BAD_CREDENTIALS = "incorrect username or password"

# Redis being down looks like these; anything else from Redis is a bug and goes to the interceptor.
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


@asynccontextmanager
async def _redis_required(context: grpc.aio.ServicerContext, action: str) -> AsyncIterator[None]:
    """Fail closed: without Redis neither revocations nor login throttling can be checked, so refuse."""
    try:
        yield
    except _REDIS_DOWN:
        logger.warning("redis unreachable during %s", action, exc_info=True)
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{action} is unavailable: session store unreachable; try again later",
        )


def _user_message(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        username=user.username,
        role=user.role,
        disabled=user.disabled,
        created_at=int(user.created_at.timestamp()),
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


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Logins, JWT sessions (issue, refresh, revoke, verify) and user administration."""

    def __init__(
        self, *, users: UserStore, tokens: Tokens, revocations: RevocationList, limiter: LoginLimiter
    ) -> None:
        self._users = users
        self._tokens = tokens
        self._revocations = revocations
        self._limiter = limiter

    @classmethod
    def from_settings(cls, settings: AuthSettings, pool: asyncpg.Pool, client: Redis) -> AuthServicer:
        return cls(
            users=UserStore(pool, Passwords.from_settings(settings)),
            tokens=Tokens.from_settings(settings),
            revocations=RevocationList(client),
            limiter=LoginLimiter(
                client,
                max_per_account=settings.login_max_failures,
                max_per_address=settings.login_max_failures_per_address,
                window_s=settings.login_window_s,
            ),
        )

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
        async with _redis_required(context, "token check"):
            revoked = await self._revocations.is_revoked(claims.jti)
        if revoked:
            await self._refuse_token(context, "token revoked")
        user = await self._users.get_by_id(claims.user_id)
        if user is None:
            await self._refuse_token(context, "user no longer exists")
        if user.disabled:
            await self._refuse_token(context, "user is disabled")
        return user, claims

    async def _require_admin(self, context: grpc.aio.ServicerContext) -> User:
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
        user, _ = await self._authenticated(token.strip(), context)
        if user.role != "admin":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this operation requires the admin role")
        return user

    async def _throttle(self, context: grpc.aio.ServicerContext, username: str, address: str) -> None:
        async with _redis_required(context, "login"):
            wait = await self._limiter.begin(username, address)
        if wait:
            logger.warning("login throttled (client address %s)", address or "not given")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed login attempts; try again in {wait} seconds",
                trailing_metadata=(("retry-after", str(wait)),),
            )

    # --- RPCs -----------------------------------------------------------------------------------

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenPair:
        await self._throttle(context, request.username, request.client_address)
        user = await self._users.authenticate(request.username, request.password)
        if user is None:
            logger.info("failed login (client address %s)", request.client_address or "not given")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, BAD_CREDENTIALS)
        async with _redis_required(context, "login"):
            await self._limiter.succeeded(request.username, request.client_address)
        # Only now: telling a guesser that an account is disabled would confirm that it exists.
        if user.disabled:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "account disabled")
        logger.info("user %s logged in", user.id)
        pair = self._tokens.issue_pair(user_id=str(user.id), username=user.username, role=user.role)
        return _token_pair(pair, self._tokens.access_ttl_s)

    async def Refresh(
        self, request: auth_pb2.RefreshRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.TokenPair:
        user, claims = await self._authenticated(request.refresh_token, context, typ=REFRESH)
        async with _redis_required(context, "token refresh"):
            first_use = await self._revocations.revoke_once(claims.jti, claims.expires_at)
        if not first_use:
            # Lost a race with a concurrent refresh or logout of the same token.
            await self._refuse_token(context, "refresh token already used")
        pair = self._tokens.issue_pair(user_id=str(user.id), username=user.username, role=user.role)
        return _token_pair(pair, self._tokens.access_ttl_s)

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
        async with _redis_required(context, "logout"):
            for claims in to_revoke:
                await self._revocations.revoke(claims.jti, claims.expires_at)
        return auth_pb2.LogoutResponse()

    async def Authenticate(
        self, request: auth_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.Principal:
        user, claims = await self._authenticated(request.token, context)
        return auth_pb2.Principal(
            user_id=str(user.id), username=user.username, role=user.role, expires_at=claims.expires_at
        )

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
        try:
            check_password(request.new_password)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"new {exc}")
        # Someone holding a stolen token must not get unlimited guesses at the old password either.
        await self._throttle(context, user.username, "")
        if not await self._users.check_password(user, request.old_password):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "old password is incorrect")
        async with _redis_required(context, "password change"):
            await self._limiter.succeeded(user.username, "")
        await self._users.set_password(user.id, request.new_password)
        logger.info("user %s changed their password", user.id)
        return auth_pb2.ChangePasswordResponse()
