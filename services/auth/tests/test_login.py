from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from redis.asyncio import Redis

from genai_auth.limiter import Attempt, LocalCounters, LoginLimiter
from genai_auth.users import User
from genai_common.redis_guard import RedisGuard

MakeUser = Callable[..., Awaitable[tuple[User, str]]]
Stub = auth_pb2_grpc.AuthServiceStub

THROTTLED = re.compile(r"^too many failed login attempts; try again in (\d+) seconds$")


async def _login_error(stub: Stub, username: str, password: str, address: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Login(auth_pb2.LoginRequest(username=username, password=password, client_address=address))
    return failed.value


def _assert_throttled(error: grpc.aio.AioRpcError, window_s: int = 60) -> int:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    match = THROTTLED.match(error.details() or "")
    assert match, error.details()
    seconds = int(match.group(1))
    assert 1 <= seconds <= window_s
    assert ("retry-after", str(seconds)) in tuple(error.trailing_metadata() or ())
    return seconds


async def test_login_success(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    before = int(time.time())
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    assert pair.token_type == "bearer"
    assert pair.expires_in == 1800
    assert (pair.username, pair.role) == (user.username, "user")
    assert pair.access_token and pair.refresh_token and pair.access_token != pair.refresh_token

    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token))
    assert (principal.user_id, principal.username, principal.role) == (str(user.id), user.username, "user")
    assert before + 1800 <= principal.expires_at <= int(time.time()) + 1800


async def test_username_is_case_insensitive(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username.upper(), password=password, client_address=address)
    )
    assert pair.username == user.username


async def test_wrong_password_and_unknown_user_look_the_same(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, password = await make_user()
    wrong = await _login_error(stub, user.username, password + "-wrong", address)
    unknown = await _login_error(stub, f"nobody-{uuid.uuid4().hex[:8]}", password, address)
    for error in (wrong, unknown):
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "incorrect username or password"


async def test_disabled_account_only_told_after_correct_password(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, password = await make_user(disabled=True)
    wrong = await _login_error(stub, user.username, "not-the-password", address)
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong.details() == "incorrect username or password"
    right = await _login_error(stub, user.username, password, address)
    assert right.code() == grpc.StatusCode.PERMISSION_DENIED
    assert right.details() == "account disabled"


async def test_account_throttled_after_max_failures_from_that_address(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, password = await make_user()
    for _ in range(3):  # login_max_failures in the test settings
        error = await _login_error(stub, user.username, "bad-password", address)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # Throttled from that address, even with the right password, and in any letter case.
    _assert_throttled(await _login_error(stub, user.username, password, address))
    _assert_throttled(await _login_error(stub, user.username.upper(), "bad-password", address))


async def test_a_guesser_cannot_lock_the_owner_out(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    attacker = f"203.0.113.9-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        await _login_error(stub, user.username, "guess", attacker)
    _assert_throttled(await _login_error(stub, user.username, "guess", attacker))
    # The owner, from their own address, signs in all the same.
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    assert pair.username == user.username


async def test_delays_grow_while_the_guessing_goes_on(redis_client: Redis) -> None:
    username = f"backoff-{uuid.uuid4().hex[:8]}"
    limiter = LoginLimiter(redis_client, RedisGuard(), max_per_account=2, max_per_address=100, window_s=60)
    address = f"198.51.100.7-{uuid.uuid4().hex[:8]}"
    assert [await limiter.begin(username, address) for _ in range(2)] == [Attempt(0), Attempt(0)]
    assert await limiter.begin(username, address) == Attempt(1)
    await asyncio.sleep(1.1)
    assert await limiter.begin(username, address) == Attempt(0)  # one more try, then twice as long
    assert await limiter.begin(username, address) == Attempt(2)
    # Another address is a pair of its own.
    assert await limiter.begin(username, address + "-other") == Attempt(0)


async def test_unknown_usernames_throttled_like_real_ones(stub: Stub, address: str) -> None:
    name = f"ghost-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        error = await _login_error(stub, name, "bad-password", address)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    _assert_throttled(await _login_error(stub, name, "bad-password", address))


async def test_success_resets_account_failures(make_user: MakeUser, stub: Stub, address: str) -> None:
    user, password = await make_user()
    for _ in range(2):
        await _login_error(stub, user.username, "bad-password", address)
    await stub.Login(auth_pb2.LoginRequest(username=user.username, password=password, client_address=address))
    for _ in range(3):
        error = await _login_error(stub, user.username, "bad-password", address)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    _assert_throttled(await _login_error(stub, user.username, password, address))


async def test_address_throttled_across_accounts(stub: Stub, address: str) -> None:
    for _ in range(6):  # login_max_failures_per_address in the test settings; one failure per account
        error = await _login_error(stub, f"spray-{uuid.uuid4().hex[:8]}", "bad-password", address)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    _assert_throttled(await _login_error(stub, f"spray-{uuid.uuid4().hex[:8]}", "bad-password", address))
    other = await _login_error(stub, f"spray-{uuid.uuid4().hex[:8]}", "bad-password", address + "-other")
    assert other.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_parallel_guesses_cannot_overrun_the_limit(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, _ = await make_user()
    results = await asyncio.gather(
        *(
            stub.Login(
                auth_pb2.LoginRequest(username=user.username, password=f"guess-{i}", client_address=address)
            )
            for i in range(12)
        ),
        return_exceptions=True,
    )
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(codes) == 12
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 3
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 9


async def test_failure_counter_expires_with_the_window(redis_client: Redis) -> None:
    username = f"window-{uuid.uuid4().hex[:8]}"
    limiter = LoginLimiter(redis_client, RedisGuard(), max_per_account=1, max_per_address=10, window_s=1)
    assert await limiter.begin(username, "") == Attempt(0)
    assert await limiter.begin(username, "") == Attempt(1)
    await asyncio.sleep(1.1)
    assert await limiter.begin(username, "") == Attempt(0)


async def test_successful_logins_do_not_use_up_the_address_budget(
    make_user: MakeUser, stub: Stub, address: str
) -> None:
    user, password = await make_user()
    for _ in range(8):  # more than login_max_failures_per_address
        await stub.Login(
            auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
        )
    error = await _login_error(stub, f"other-{uuid.uuid4().hex[:8]}", "bad-password", address)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_local_counters_apply_the_same_rules() -> None:
    now = [1000.0]
    counters = LocalCounters(window_s=60, clock=lambda: now[0])
    account, address = ["account"], ["account", "address"]
    assert [counters.begin(account, [2]) for _ in range(2)] == [0, 0]
    assert counters.begin(account, [2]) == 60  # refused, and not counted
    now[0] += 30
    assert counters.begin(account, [2]) == 30  # the window runs from the first failure
    now[0] += 30
    assert counters.begin(account, [2]) == 0  # a new window
    # A success clears the account and gives the address its attempt back.
    other = ["other", "address"]
    assert counters.begin(other, [5, 2]) == 0
    assert counters.begin(address, [5, 2]) == 0
    assert counters.begin(["third", "address"], [5, 2]) == 60  # the address is spent
    counters.succeeded(address)
    assert counters.begin(["third", "address"], [5, 2]) == 0
    assert counters.begin(account, [1]) == 0  # cleared by the success (then counted once)
