from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from jose import jwt
from redis.asyncio import Redis

from genai_auth.revocation import MIRROR_KEY
from genai_auth.servicer import AuthServicer
from genai_auth.settings import AuthSettings
from genai_auth.tokens import Tokens
from genai_auth.users import User, UserStore

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub
Serve = Callable[[AuthServicer], AbstractAsyncContextManager[Stub]]


async def _login(stub: Stub, user: User, password: str, address: str) -> auth_pb2.TokenPair:
    return await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )


async def _auth_code(stub: Stub, token: str) -> grpc.StatusCode:
    try:
        await stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _refresh_code(stub: Stub, token: str) -> grpc.StatusCode:
    try:
        await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token))
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_logout_revokes_access_token(
    make_user: MakeUser, stub: Stub, redis_client: Redis, address: str
) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.OK
    await stub.Logout(auth_pb2.LogoutRequest(access_token=pair.access_token))
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.UNAUTHENTICATED

    jti = jwt.get_unverified_claims(pair.access_token)["jti"]
    # Mirrored in Redis with the token's expiry, after which it is removed.
    expires_at = await redis_client.zscore(MIRROR_KEY, jti)
    assert expires_at == jwt.get_unverified_claims(pair.access_token)["exp"]
    # The session ends as a whole: its refresh token too, though it was not given; another session lives.
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    other = await _login(stub, user, password, address)
    assert await _refresh_code(stub, other.refresh_token) == grpc.StatusCode.OK


async def test_logout_revokes_refresh_token_too(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    await stub.Logout(
        auth_pb2.LogoutRequest(access_token=pair.access_token, refresh_token=pair.refresh_token)
    )
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_with_only_refresh_token(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    await stub.Logout(
        auth_pb2.LogoutRequest(access_token="expired-or-lost", refresh_token=pair.refresh_token)
    )
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_needs_a_valid_token(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Logout(auth_pb2.LogoutRequest(access_token="junk", refresh_token="junk"))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    first = await _login(stub, user, password, address)
    second = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
    assert second.token_type == "bearer"
    assert (second.username, second.role, second.expires_in) == (user.username, "user", 1800)
    assert {second.access_token, second.refresh_token}.isdisjoint({first.access_token, first.refresh_token})
    assert await _auth_code(stub, second.access_token) == grpc.StatusCode.OK
    # The new refresh token works once; a spent one is refused (and ends the chain: see below).
    assert await _refresh_code(stub, second.refresh_token) == grpc.StatusCode.OK
    assert await _refresh_code(stub, second.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _refresh_code(stub, first.refresh_token) == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_refreshes_only_one_wins(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    codes = await asyncio.gather(*(_refresh_code(stub, pair.refresh_token) for _ in range(8)))
    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 7


async def test_disabled_user_cannot_authenticate_or_refresh(
    make_user: MakeUser, stub: Stub, store: UserStore, address: str
) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    await store.set_disabled(user.username, True)
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    await store.set_disabled(user.username, False)
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.OK


async def test_role_comes_from_the_database(
    make_user: MakeUser, stub: Stub, pool: asyncpg.Pool, address: str
) -> None:
    user, password = await make_user("admin")
    pair = await _login(stub, user, password, address)
    await pool.execute("UPDATE users SET role = 'user' WHERE id = $1", user.id)
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token))
    assert principal.role == "user"


async def test_deleted_user_token_refused(
    make_user: MakeUser, stub: Stub, pool: asyncpg.Pool, address: str
) -> None:
    user, password = await make_user()
    pair = await _login(stub, user, password, address)
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.UNAUTHENTICATED


# --- sessions that end when they should -----------------------------------------------------------------


async def test_changing_ones_password_ends_the_other_sessions(
    make_user: MakeUser, stub: Stub, settings: AuthSettings, address: str
) -> None:
    user, password = await make_user()
    # Another session, begun a few seconds ago (a forgotten browser, or a stolen refresh token).
    earlier = Tokens.from_settings(settings)
    earlier._clock = lambda: time.time() - 5  # type: ignore[method-assign]
    other = earlier.issue_pair(user_id=str(user.id), username=user.username, role=user.role)
    mine = await _login(stub, user, password, address)
    changed = await stub.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            access_token=mine.access_token, old_password=password, new_password=password + "-new"
        )
    )
    assert await _refresh_code(stub, other.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _auth_code(stub, other.access_token) == grpc.StatusCode.UNAUTHENTICATED
    # The caller goes on with the session the answer carries.
    assert await _auth_code(stub, changed.tokens.access_token) == grpc.StatusCode.OK
    assert await _refresh_code(stub, changed.tokens.refresh_token) == grpc.StatusCode.OK


async def test_a_reused_refresh_token_revokes_its_whole_chain(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, password = await make_user()
    first = await _login(stub, user, password, address)
    second = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=first.refresh_token))
    third = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=second.refresh_token))
    # The first refresh token again: a copy is in someone else's hands.
    assert await _refresh_code(stub, first.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _refresh_code(stub, third.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _auth_code(stub, third.access_token) == grpc.StatusCode.UNAUTHENTICATED
    # Another login of the same user is another chain.
    elsewhere = await _login(stub, user, password, address)
    assert await _refresh_code(stub, elsewhere.refresh_token) == grpc.StatusCode.OK


async def test_logout_with_an_expired_access_token_ends_the_session_by_its_refresh_token(
    make_user: MakeUser, stub: Stub, settings: AuthSettings, address: str
) -> None:
    user, password = await make_user()
    long_ago = Tokens.from_settings(settings)
    long_ago._clock = lambda: time.time() - settings.access_ttl_s - 60  # type: ignore[method-assign]
    pair = long_ago.issue_pair(user_id=str(user.id), username=user.username, role=user.role)
    assert await _auth_code(stub, pair.access_token) == grpc.StatusCode.UNAUTHENTICATED  # expired
    await stub.Logout(
        auth_pb2.LogoutRequest(access_token=pair.access_token, refresh_token=pair.refresh_token)
    )
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
