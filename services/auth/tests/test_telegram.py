"""Telegram links in auth's store: codes that work once and only for a while, the chat-scoped key a link
gives, one link per Telegram account, and ending a link with its key."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from genai_auth.api_keys import ApiKeyStore, InvalidApiKey
from genai_auth.telegram import CODE_LENGTH, InvalidCode, TelegramLinks
from genai_auth.users import User, UserStore

MakeUser = Callable[..., Awaitable[tuple[User, str]]]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(pool: asyncpg.Pool) -> ApiKeyStore:
    return ApiKeyStore(pool)


@pytest.fixture
def links(keys: ApiKeyStore, clock: Clock) -> TelegramLinks:
    return TelegramLinks(keys, clock)


async def test_a_code_links_once_and_gives_a_chat_key_that_acts_as_a_user(
    links: TelegramLinks, keys: ApiKeyStore, store: UserStore, make_user: MakeUser
) -> None:
    admin, _ = await make_user("admin")
    code, _ = await links.create_code(admin, 600)
    assert len(code) == CODE_LENGTH
    # Typed by a person: lower case, with spaces and dashes.
    typed = f" {code[:4].lower()}-{code[4:8]} {code[8:]}"
    redeemed = await links.redeem(typed, 1001, "alice_tg", store.get_by_id)
    key, owner = await keys.authenticate(redeemed.api_key)
    assert (key.scope, owner.username, owner.role) == ("chat", admin.username, "user")
    assert key.name == "Telegram @alice_tg" and key.expires_at is None
    with pytest.raises(InvalidCode):
        await links.redeem(code, 1002, "", store.get_by_id)
    # Kept as a SHA-256 only, and spent.
    used = await keys.pool.fetchval(
        "SELECT used_at IS NOT NULL FROM telegram_link_codes WHERE code_hash = $1",
        hashlib.sha256(code.encode()).digest(),
    )
    assert used is True


async def test_an_expired_or_wrong_code_links_nothing(
    links: TelegramLinks, store: UserStore, clock: Clock, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    code, expires_at = await links.create_code(user, 600)
    assert expires_at.timestamp() == pytest.approx(clock.now + 600)
    clock.now += 601
    with pytest.raises(InvalidCode):
        await links.redeem(code, 2001, "", store.get_by_id)
    with pytest.raises(InvalidCode):
        await links.redeem("ABCDEFGHJKMN", 2001, "", store.get_by_id)
    assert await links.list(user.id, include_revoked=True) == []


async def test_a_disabled_users_code_links_nothing(
    links: TelegramLinks, store: UserStore, make_user: MakeUser
) -> None:
    user, _ = await make_user()
    code, _ = await links.create_code(user, 600)
    await store.set_disabled(user.username, True)
    with pytest.raises(InvalidCode):
        await links.redeem(code, 3001, "", store.get_by_id)


async def test_linking_an_account_again_ends_its_earlier_link_and_key(
    links: TelegramLinks, keys: ApiKeyStore, store: UserStore, make_user: MakeUser, clock: Clock
) -> None:
    owner: User = (await make_user())[0]
    earlier = await links.redeem((await links.create_code(owner, 600))[0], 4001, "", store.get_by_id)
    clock.now += 1  # the list is newest first; with one instant for both, the order would be the ids'
    later = await links.redeem((await links.create_code(owner, 600))[0], 4001, "", store.get_by_id)
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(earlier.api_key)
    assert (await keys.authenticate(later.api_key))[1].id == owner.id
    assert [(x.id, x.revoked) for x in await links.list(owner.id, include_revoked=True)] == [
        (later.link.id, False),
        (earlier.link.id, True),
    ]


async def test_a_code_redeemed_with_someone_elses_telegram_id_leaves_their_link_alone(
    links: TelegramLinks, keys: ApiKeyStore, store: UserStore, make_user: MakeUser
) -> None:
    """Redeeming takes the Telegram id on trust (the bot's word): another user's code, redeemed with the
    victim's id by hand, must not end the victim's link."""
    victim: User = (await make_user())[0]
    other: User = (await make_user())[0]
    linked = await links.redeem((await links.create_code(victim, 600))[0], 4002, "", store.get_by_id)
    await links.redeem((await links.create_code(other, 600))[0], 4002, "", store.get_by_id)
    assert (await keys.authenticate(linked.api_key))[1].id == victim.id
    assert [x.id for x in await links.list(victim.id, include_revoked=False)] == [linked.link.id]


async def test_ending_a_link_revokes_its_key_and_only_its_owner_or_an_admin_can(
    links: TelegramLinks, keys: ApiKeyStore, store: UserStore, make_user: MakeUser
) -> None:
    owner: User = (await make_user())[0]
    other: User = (await make_user())[0]
    redeemed = await links.redeem((await links.create_code(owner, 600))[0], 5001, "bob", store.get_by_id)
    assert await links.revoke(redeemed.link.id, owner_id=other.id) is None
    ended = await links.revoke(redeemed.link.id, owner_id=owner.id)
    assert ended is not None and ended.revoked and ended.telegram_username == "bob"
    with pytest.raises(InvalidApiKey):
        await keys.authenticate(redeemed.api_key)
    # Revoking the key from the API keys page ends the link as well.
    again = await links.redeem((await links.create_code(owner, 600))[0], 5001, "bob", store.get_by_id)
    await keys.revoke(again.link.api_key_id)
    assert all(x.revoked for x in await links.list(owner.id, include_revoked=True))
    everyone = await links.list(None, include_revoked=True)
    assert {again.link.id, redeemed.link.id} <= {x.id for x in everyone}
