from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import argon2
import asyncpg
import pytest

from genai_auth.passwords import Passwords, return_hashing_memory
from genai_auth.users import User, UserStore

MakeUser = Callable[..., Awaitable[tuple[User, str]]]


@pytest.fixture
def fast() -> Passwords:
    return Passwords(time_cost=1, memory_cost=64, parallelism=1)


async def test_hash_is_argon2id_and_verifies(fast: Passwords) -> None:
    hashed = await fast.hash("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse battery" not in hashed
    assert await fast.verify(hashed, "correct horse battery")
    assert not await fast.verify(hashed, "correct horse battery!")


def _anonymous_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


async def test_hashing_threads_give_their_working_area_back() -> None:
    # 8 MiB working areas on several threads at once: without a fixed mmap threshold glibc keeps one in
    # each hashing thread's heap after the first hash (24 MiB and more here).
    return_hashing_memory()
    passwords = Passwords(time_cost=1, memory_cost=8192, parallelism=1)
    before = _anonymous_mib()
    for _ in range(3):
        await asyncio.gather(*(passwords.hash(f"password {i}") for i in range(4)))
    assert _anonymous_mib() - before < 8


async def test_broken_stored_hash_does_not_verify(fast: Passwords) -> None:
    assert not await fast.verify("not-a-hash", "whatever-password")
    assert not await fast.verify("", "whatever-password")


async def test_dummy_verification_costs_what_a_real_one_does(fast: Passwords) -> None:
    # Same parameters as real hashes, or an unknown username would answer measurably faster.
    await fast.verify_dummy("anything")
    real = await fast.hash("anything-else")
    assert fast._dummy_hash is not None
    assert fast._dummy_hash.split("$")[:4] == real.split("$")[:4] == ["", "argon2id", "v=19", "m=64,t=1,p=1"]


async def test_hashing_does_not_block_the_event_loop() -> None:
    # Default parameters: a hash takes long enough (~0.1-0.3 s) that a blocked loop would be obvious.
    passwords = Passwords(
        time_cost=argon2.DEFAULT_TIME_COST,
        memory_cost=argon2.DEFAULT_MEMORY_COST,
        parallelism=argon2.DEFAULT_PARALLELISM,
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await passwords.hash("a password to hash")
    finally:
        task.cancel()
    assert ticks >= 3


async def test_stored_passwords_are_argon2id_never_plain(
    make_user: MakeUser, pool: asyncpg.Pool, store: UserStore
) -> None:
    user, password = await make_user()
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert stored.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert password not in stored
    assert await store.authenticate(user.username, password) is not None


async def test_rehash_when_parameters_change(make_user: MakeUser, pool: asyncpg.Pool) -> None:
    user, password = await make_user()
    stronger = UserStore(pool, Passwords(time_cost=2, memory_cost=128, parallelism=1))
    assert await stronger.authenticate(user.username, password) is not None
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert stored.startswith("$argon2id$v=19$m=128,t=2,p=1$")
    # Still the same password, under the new hash.
    assert await stronger.authenticate(user.username, password) is not None
    assert await stronger.authenticate(user.username, password + "x") is None


async def test_wrong_password_leaves_hash_alone(make_user: MakeUser, pool: asyncpg.Pool) -> None:
    user, _ = await make_user()
    stronger = UserStore(pool, Passwords(time_cost=2, memory_cost=128, parallelism=1))
    assert await stronger.authenticate(user.username, "not-the-password") is None
    stored = await pool.fetchval("SELECT password_hash FROM users WHERE id = $1", user.id)
    assert stored == user.password_hash
