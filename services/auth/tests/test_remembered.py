"""Accounts as last read answer token checks while PostgreSQL fails, within their trust, and never after a
change that the feed announced. The outage here is a pool of the test's own that is terminated (asyncpg's
own failure, no stand-in); the whole stack's outages are in tests/test_faults.py."""

from __future__ import annotations

import asyncio

import pytest
from genai.auth.v1 import auth_pb2

from genai_auth.passwords import Passwords
from genai_auth.remembered import RememberedUsers
from genai_auth.settings import AuthSettings
from genai_auth.users import UserStore
from genai_common.db import DATABASE_ERRORS, DatabaseState, create_pool

from .conftest import MakeUser


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _failing_store(settings: AuthSettings) -> UserStore:
    """A store whose pool is gone, as after PostgreSQL went away: every query fails with asyncpg's error."""
    pool = await create_pool(settings.database_url)
    pool.terminate()
    return UserStore(pool, Passwords.from_settings(settings))


async def test_an_outage_is_answered_from_the_last_read_within_its_trust(
    settings: AuthSettings, store: UserStore, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    clock, state = Clock(), DatabaseState()
    accounts = RememberedUsers(store, trust_s=60, state=state, clock=clock)
    assert (await accounts.get_by_id(str(user.id))) == user

    accounts._users = await _failing_store(settings)
    assert (await accounts.get_by_id(str(user.id))) == user
    assert not state.up
    # Someone never read before cannot be vouched for: the database's error, which the service answers
    # with UNAVAILABLE.
    other, _ = await make_user()
    with pytest.raises(DATABASE_ERRORS):
        await accounts.get_by_id(str(other.id))
    # Past its trust, the account as last read is no longer used.
    clock.now += 61
    with pytest.raises(DATABASE_ERRORS):
        await accounts.get_by_id(str(user.id))


async def test_a_change_announced_on_the_feed_is_never_answered_from_memory(
    settings: AuthSettings, store: UserStore, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    accounts = RememberedUsers(store, trust_s=600)
    await accounts.get_by_id(str(user.id))
    accounts._users = await _failing_store(settings)
    accounts.heard(auth_pb2.CredentialChanges(user_ids=[str(user.id)]))
    await asyncio.gather(*accounts._rereads)
    with pytest.raises(DATABASE_ERRORS):
        await accounts.get_by_id(str(user.id))


async def test_a_change_is_read_again_at_once_and_the_feed_starting_again_distrusts_older_reads(
    settings: AuthSettings, store: UserStore, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    accounts = RememberedUsers(store, trust_s=600)
    await accounts.get_by_id(str(user.id))
    disabled = await store.set_disabled(user.username, True)
    accounts.heard(auth_pb2.CredentialChanges(user_ids=[str(user.id)]))
    await asyncio.gather(*accounts._rereads)
    accounts._users = await _failing_store(settings)
    # Read again after the change: the outage answers with the disabled account, which auth refuses.
    assert (await accounts.get_by_id(str(user.id))) == disabled

    # The feed listens again after losing its connection; the read again fails: nothing is trusted.
    accounts.listening()
    await asyncio.gather(*accounts._rereads)
    with pytest.raises(DATABASE_ERRORS):
        await accounts.get_by_id(str(user.id))


async def test_no_trust_refuses_at_once(
    settings: AuthSettings, store: UserStore, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    accounts = RememberedUsers(store, trust_s=0)
    await accounts.get_by_id(str(user.id))
    accounts.remember(user)
    accounts._users = await _failing_store(settings)
    with pytest.raises(DATABASE_ERRORS):
        await accounts.get_by_id(str(user.id))
