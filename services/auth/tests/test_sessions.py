from __future__ import annotations

import asyncio
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
    # The refresh token was not given, so it still works.
    assert await _refresh_code(stub, pair.refresh_token) == grpc.StatusCode.OK


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
    # The old refresh token is spent; the new one works once.
    assert await _refresh_code(stub, first.refresh_token) == grpc.StatusCode.UNAUTHENTICATED
    assert await _refresh_code(stub, second.refresh_token) == grpc.StatusCode.OK
    assert await _refresh_code(stub, second.refresh_token) == grpc.StatusCode.UNAUTHENTICATED


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
