"""Auth keeps answering while Redis is unreachable or hung, without letting revoked tokens back in, and
goes back to Redis by itself once it answers again. Real Redis servers, stopped and killed for real."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from jose import jwt
from redis.asyncio import Redis

from genai_auth.revocation import COMPLETE, MIRROR_KEY
from genai_auth.users import User
from genai_common.redis_client import create_redis
from genai_devstack import infra

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub
Wire = Callable[..., AbstractAsyncContextManager[Any]]  # conftest.wire: Wired(stub, servicer)
T = TypeVar("T")

# Every call gets this long: far above one Redis timeout (0.5 s), so a call that hangs on Redis fails
# the test instead of blocking it.
CALL_TIMEOUT_S = 5.0


async def _in_redis(client: Redis, member: str) -> bool:
    """Whether the Redis mirror holds a token id (or its completeness marker, COMPLETE)."""
    return await client.zscore(MIRROR_KEY, member) is not None


async def _call(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, CALL_TIMEOUT_S)


async def _code(awaitable: Awaitable[object]) -> grpc.StatusCode:
    try:
        await _call(awaitable)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _login(stub: Stub, user: User, password: str, address: str) -> auth_pb2.TokenPair:
    return await _call(
        stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))
    )


def _authenticate(stub: Stub, token: str) -> Awaitable[object]:
    return stub.Authenticate(auth_pb2.AuthenticateRequest(token=token))


def _refresh(stub: Stub, token: str) -> Awaitable[object]:
    return stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token))


def _jti(token: str) -> str:
    return str(jwt.get_unverified_claims(token)["jti"])


async def _in_postgres(pool: asyncpg.Pool, token: str) -> bool:
    return bool(
        await pool.fetchval("SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1)", _jti(token))
    )


async def _in_backlog(pool: asyncpg.Pool, token: str) -> bool:
    return bool(
        await pool.fetchval("SELECT EXISTS (SELECT 1 FROM revocation_backlog WHERE jti = $1)", _jti(token))
    )


async def _backlog_empty(pool: asyncpg.Pool, *tokens: str) -> bool:
    return not any([await _in_backlog(pool, token) for token in tokens])


async def _eventually(check: Callable[[], object], what: str, within_s: float = 15.0) -> None:
    """Wait until check() (a value or an awaitable) is true; fail the test after `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.05)


def _dead_redis_url() -> str:
    return f"redis://127.0.0.1:{infra.free_port()}/0"


async def test_unreachable_redis_sessions_keep_working(
    wire: Wire, stub: Stub, make_user: MakeUser, address: str, pool: asyncpg.Pool
) -> None:
    user, password = await make_user()
    # Logged out while Redis was fine (the session's own Redis and PostgreSQL).
    logged_out = await _login(stub, user, password, address)
    await _call(
        stub.Logout(
            auth_pb2.LogoutRequest(
                access_token=logged_out.access_token, refresh_token=logged_out.refresh_token
            )
        )
    )
    assert await _in_postgres(pool, logged_out.access_token)

    # A real client aimed at a port nobody listens on: Redis unreachable, not mocked.
    async with wire(_dead_redis_url()) as cut_off:
        s = cut_off.stub
        assert await _code(_authenticate(s, logged_out.access_token)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _code(_refresh(s, logged_out.refresh_token)) == grpc.StatusCode.UNAUTHENTICATED

        pair = await _login(s, user, password, address)
        principal = await _call(s.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token)))
        assert principal.username == user.username

        # Refresh rotation stays single-use: PostgreSQL arbitrates.
        codes = await asyncio.gather(*(_code(_refresh(s, pair.refresh_token)) for _ in range(8)))
        assert codes.count(grpc.StatusCode.OK) == 1
        assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 7

        await _call(s.Logout(auth_pb2.LogoutRequest(access_token=pair.access_token)))
        assert await _code(_authenticate(s, pair.access_token)) == grpc.StatusCode.UNAUTHENTICATED
        assert await _in_postgres(pool, pair.access_token)

        # Changing the password (which also throttles guesses at the old one) works too.
        other = await _login(s, user, password, address)
        new_password = f"pw-{uuid.uuid4().hex}"
        await _call(
            s.ChangePassword(
                auth_pb2.ChangePasswordRequest(
                    access_token=other.access_token, old_password=password, new_password=new_password
                )
            )
        )
        await _login(s, user, new_password, address)

        assert cut_off.servicer.revocations.guard.degraded
    # And the token revoked during the outage is refused where Redis works, too (PostgreSQL has it).
    assert await _code(_authenticate(stub, pair.access_token)) == grpc.StatusCode.UNAUTHENTICATED


async def test_login_throttle_falls_back_to_this_process(
    wire: Wire, make_user: MakeUser, address: str
) -> None:
    user, password = await make_user()
    async with wire(_dead_redis_url()) as cut_off:
        s = cut_off.stub
        # The same limit as with Redis (login_max_failures=3 in the test settings), never lifted.
        for _ in range(3):
            request = auth_pb2.LoginRequest(username=user.username, password="wrong", client_address=address)
            assert await _code(s.Login(request)) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as throttled:
            await _call(
                s.Login(
                    auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
                )
            )
        assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 1 <= int(dict(throttled.value.trailing_metadata() or ())["retry-after"]) <= 60

        # Parallel guesses cannot overrun it either.
        victim, _ = await make_user()
        results = await asyncio.gather(
            *(
                _code(
                    s.Login(
                        auth_pb2.LoginRequest(
                            username=victim.username, password=f"guess-{i}", client_address=address
                        )
                    )
                )
                for i in range(12)
            )
        )
        assert results.count(grpc.StatusCode.UNAUTHENTICATED) == 3
        assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 9


async def test_hung_then_dead_redis(
    own_redis: infra.Service, wire: Wire, make_user: MakeUser, address: str, pool: asyncpg.Pool
) -> None:
    pid = own_redis.process.pid  # type: ignore[attr-defined]
    watcher = create_redis(own_redis.url)  # the test's own view of that Redis
    try:
        async with wire(own_redis.url, cooldown_s=0.5) as w:
            s, revocations = w.stub, w.servicer.revocations
            # The upkeep loop copies the revocations to the new (empty) Redis and vouches for it.
            await _eventually(lambda: _in_redis(watcher, COMPLETE), "Redis marked as a complete mirror")

            user, password = await make_user()
            before = await _login(s, user, password, address)
            await _call(
                s.Logout(
                    auth_pb2.LogoutRequest(
                        access_token=before.access_token, refresh_token=before.refresh_token
                    )
                )
            )
            assert await _in_redis(watcher, _jti(before.access_token))
            assert await _in_postgres(pool, before.access_token)
            during = await _login(s, user, password, address)
            rotating = await _login(s, user, password, address)

            os.kill(pid, signal.SIGSTOP)  # hung: connections accepted, nothing answered
            try:
                # Every call completes (a hang fails _call), refusing and accepting as before.
                assert await _code(_authenticate(s, before.access_token)) == grpc.StatusCode.UNAUTHENTICATED
                assert await _code(_refresh(s, before.refresh_token)) == grpc.StatusCode.UNAUTHENTICATED
                fresh = await _login(s, user, password, address)
                assert await _code(_authenticate(s, fresh.access_token)) == grpc.StatusCode.OK
                assert await _code(_authenticate(s, during.access_token)) == grpc.StatusCode.OK
                await _call(s.Logout(auth_pb2.LogoutRequest(access_token=during.access_token)))
                assert await _code(_authenticate(s, during.access_token)) == grpc.StatusCode.UNAUTHENTICATED
                codes = await asyncio.gather(*(_code(_refresh(s, rotating.refresh_token)) for _ in range(6)))
                assert codes.count(grpc.StatusCode.OK) == 1
                assert revocations.guard.degraded
                # The logout and the rotation wait for Redis in the backlog.
                assert await _in_backlog(pool, during.access_token)
                assert await _in_backlog(pool, rotating.refresh_token)
                # After the cool-down one call tries Redis again, pays the timeout, and still completes.
                await asyncio.sleep(0.6)
                assert await _code(_authenticate(s, during.access_token)) == grpc.StatusCode.UNAUTHENTICATED
                assert await _code(_authenticate(s, fresh.access_token)) == grpc.StatusCode.OK
                await _login(s, user, password, address)
                assert revocations.guard.degraded
            finally:
                os.kill(pid, signal.SIGCONT)

            # Back: the upkeep loop notices without any request and copies what Redis missed.
            during_jti = _jti(during.access_token)
            await _eventually(lambda: _in_redis(watcher, during_jti), "outage revocation copied to Redis")
            await _eventually(
                lambda: _backlog_empty(pool, during.access_token, rotating.refresh_token), "backlog emptied"
            )
            await _eventually(lambda: not revocations.guard.degraded, "outage over")
            # Still refused, now that Redis answers again and holds them.
            assert await _code(_authenticate(s, during.access_token)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(_refresh(s, rotating.refresh_token)) == grpc.StatusCode.UNAUTHENTICATED
            # Redis is used again: a revocation made now is in Redis at once.
            after = await _login(s, user, password, address)
            await _call(s.Logout(auth_pb2.LogoutRequest(access_token=after.access_token)))
            assert await _in_redis(watcher, _jti(after.access_token))
            assert not await _in_backlog(pool, after.access_token)

            # Then Redis dies for good.
            own_redis.process.kill()  # type: ignore[attr-defined]
            own_redis.process.wait(5)  # type: ignore[attr-defined]
            last = await _login(s, user, password, address)
            assert await _code(_authenticate(s, last.access_token)) == grpc.StatusCode.OK
            for refused in (before.access_token, during.access_token, after.access_token):
                assert await _code(_authenticate(s, refused)) == grpc.StatusCode.UNAUTHENTICATED
            assert await _code(_refresh(s, last.refresh_token)) == grpc.StatusCode.OK
            assert await _code(_refresh(s, last.refresh_token)) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await watcher.aclose()
