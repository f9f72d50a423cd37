"""The credential change feed: every change that can alter an Authenticate answer reaches WatchCredentials
streams as it commits, whoever made it, and a stream ends when the feed can no longer promise that."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from redis.asyncio import Redis

from genai_auth.api_keys import ApiKeyStore
from genai_auth.changes import APPLICATION_NAME, ChangeFeed, FeedUnavailable, parse_notice
from genai_auth.limits import parse_limits
from genai_auth.revocation import RevocationList
from genai_auth.servicer import AuthServicer
from genai_auth.settings import AuthSettings
from genai_auth.users import UserStore
from genai_common.redis_guard import RedisGuard

from .conftest import MakeUser, Serve

WAIT_S = 10.0


@asynccontextmanager
async def _feed(settings: AuthSettings, heartbeat_s: float = 0.2) -> AsyncIterator[ChangeFeed]:
    feed = ChangeFeed(settings.database_url, heartbeat_s=heartbeat_s)
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        # Listening once the first heartbeat could be sent.
        for _ in range(200):
            if feed._listening:
                break
            await asyncio.sleep(0.05)
        assert feed._listening, "the feed did not start listening"
        yield feed
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


class _Watcher:
    """One WatchCredentials stream, read in the background."""

    def __init__(self, stub: auth_pb2_grpc.AuthServiceStub) -> None:
        self.call = stub.WatchCredentials(auth_pb2.WatchCredentialsRequest())
        self.changes: asyncio.Queue[auth_pb2.CredentialChanges] = asyncio.Queue()
        self.ended: grpc.aio.AioRpcError | None = None
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for change in self.call:
                await self.changes.put(change)
        except grpc.aio.AioRpcError as exc:
            self.ended = exc

    async def named(self) -> auth_pb2.CredentialChanges:
        """The next message that names a credential (heartbeats skipped)."""
        while True:
            change = await asyncio.wait_for(self.changes.get(), WAIT_S)
            if change.user_ids or change.token_ids:
                return change

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, WAIT_S)


Watched = tuple[auth_pb2_grpc.AuthServiceStub, _Watcher, ChangeFeed]


@pytest.fixture
async def watched(
    settings: AuthSettings, pool: asyncpg.Pool, redis_client: Redis, serve: Serve
) -> AsyncIterator[Watched]:
    async with _feed(settings) as feed:
        async with serve(AuthServicer.from_settings(settings, pool, redis_client, feed)) as stub:
            watcher = _Watcher(stub)
            first = await asyncio.wait_for(watcher.changes.get(), WAIT_S)
            assert first.heartbeat_ms == 200 and not first.user_ids and not first.token_ids
            try:
                yield stub, watcher, feed
            finally:
                await watcher.close()


def test_notices_parse_into_changes() -> None:
    assert list(parse_notice("user:abc").user_ids) == ["abc"]  # type: ignore[union-attr]
    assert list(parse_notice("token:j1").token_ids) == ["j1"]  # type: ignore[union-attr]
    assert parse_notice("all").all_credentials  # type: ignore[union-attr]
    assert parse_notice("something else") is None


async def test_user_changes_are_announced_whoever_makes_them(
    watched: Watched,
    store: UserStore,
    pool: asyncpg.Pool,
    make_user: MakeUser,
) -> None:
    _, watcher, _ = watched
    user, _ = await make_user()
    # The store's own methods, as the servicer and genai-auth-admin use them.
    await store.set_disabled(user.username, True)
    assert list((await watcher.named()).user_ids) == [str(user.id)]
    await store.set_limits(user.username, parse_limits('{"requests_per_minute": 5}'))
    assert list((await watcher.named()).user_ids) == [str(user.id)]
    await store.set_role(user.username, "admin")
    assert list((await watcher.named()).user_ids) == [str(user.id)]
    await store.reset_password(user.username, None)
    assert list((await watcher.named()).user_ids) == [str(user.id)]
    # A hand-written statement, as an operator might run in psql.
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)
    assert list((await watcher.named()).user_ids) == [str(user.id)]


async def test_revoked_tokens_and_api_keys_are_announced(
    watched: Watched,
    pool: asyncpg.Pool,
    redis_client: Redis,
    make_user: MakeUser,
) -> None:
    _, watcher, _ = watched
    revocations = RevocationList(pool, redis_client, RedisGuard())
    jti = uuid.uuid4().hex
    await revocations.revoke(jti, 4_000_000_000)
    assert list((await watcher.named()).token_ids) == [jti]

    user, _ = await make_user()
    keys = ApiKeyStore(pool)
    created = await keys.create(user, "script", 0)
    # Using a key updates last_used_at, which changes no answer and is not announced.
    await keys.authenticate(created.secret)
    await keys.revoke(created.key.id, owner_id=user.id)
    assert list((await watcher.named()).token_ids) == [str(created.key.id)]
    # Any other column of a key, written by hand: its prefix no longer finds it.
    other = await keys.create(user, "other", 0)
    await pool.execute("UPDATE api_keys SET prefix = prefix || 'x' WHERE id = $1", other.key.id)
    assert list((await watcher.named()).token_ids) == [str(other.key.id)]


async def test_authenticate_names_the_credential_the_feed_speaks_of(
    watched: Watched,
    pool: asyncpg.Pool,
    make_user: MakeUser,
    address: str,
) -> None:
    stub, watcher, _ = watched
    user, password = await make_user()
    pair = await stub.Login(
        auth_pb2.LoginRequest(username=user.username, password=password, client_address=address)
    )
    principal = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=pair.access_token))
    assert principal.token_id and principal.user_id == str(user.id)
    await stub.Logout(auth_pb2.LogoutRequest(access_token=pair.access_token))
    assert list((await watcher.named()).token_ids) == [principal.token_id]

    created = await ApiKeyStore(pool).create(user, "script", 0)
    by_key = await stub.Authenticate(auth_pb2.AuthenticateRequest(token=created.secret))
    assert by_key.token_id == by_key.api_key_id == str(created.key.id)


async def test_a_lost_database_connection_ends_the_streams_and_the_feed_comes_back(
    watched: Watched,
    pool: asyncpg.Pool,
    make_user: MakeUser,
) -> None:
    stub, watcher, _ = watched
    # The listening backend is killed, as a PostgreSQL restart or failover would.
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert killed >= 1
    await asyncio.wait_for(asyncio.shield(watcher._task), WAIT_S)
    assert watcher.ended is not None and watcher.ended.code() == grpc.StatusCode.UNAVAILABLE

    # Listening again: a new stream hears the next change.
    for _ in range(100):
        again = _Watcher(stub)
        try:
            await asyncio.wait_for(again.changes.get(), 1.0)
        except TimeoutError:
            await again.close()
            continue
        break
    else:
        pytest.fail("the feed did not listen again")
    try:
        user, _ = await make_user()
        await pool.execute("UPDATE users SET disabled = true WHERE id = $1", user.id)
        assert list((await again.named()).user_ids) == [str(user.id)]
    finally:
        await again.close()


async def test_a_subscriber_that_falls_behind_is_ended(settings: AuthSettings) -> None:
    async with _feed(settings) as feed:
        feed._max_pending = 3
        async with feed.subscribe() as subscription:
            for n in range(5):
                feed._on_notice(None, 0, "", f"user:{n}")
            assert subscription.ended
            # Ended at once, its backlog dropped: the subscriber starts afresh rather than trust it.
            received = [change async for change in _until_ended(subscription)]
            assert received == []


async def _until_ended(
    subscription: AsyncIterator[auth_pb2.CredentialChanges],
) -> AsyncIterator[auth_pb2.CredentialChanges]:
    try:
        async for change in subscription:
            if change.user_ids:
                yield change
    except FeedUnavailable:
        return


async def test_without_a_feed_the_call_is_refused(
    settings: AuthSettings, pool: asyncpg.Pool, redis_client: Redis, serve: Serve
) -> None:
    async with serve(AuthServicer.from_settings(settings, pool, redis_client)) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.WatchCredentials(auth_pb2.WatchCredentialsRequest()):
                pass
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
