"""Entry point of the auth gRPC service."""

from __future__ import annotations

import asyncio
import logging

from genai.auth.v1 import auth_pb2_grpc

from genai_auth.changes import ChangeFeed
from genai_auth.passwords import return_hashing_memory
from genai_auth.schema import apply_migrations
from genai_auth.servicer import SERVICE_NAME, AuthServicer
from genai_auth.settings import AuthSettings
from genai_common import runner
from genai_common.db import DATABASE_ERRORS, DatabaseState, create_pool, watch_pool
from genai_common.grpc_server import DependencyErrors, serve
from genai_common.logs import setup_logging
from genai_common.mtls import files_from_settings
from genai_common.redis_client import create_redis
from genai_common.settings import load_settings

logger = logging.getLogger(__name__)

UPKEEP_STOP_S = 15.0
DATABASE_DOWN = (
    "the authentication service cannot reach its database (PostgreSQL), so signing in and account "
    "changes are unavailable; try again in a minute (signed-in sessions continue)"
)


async def run(settings: AuthSettings) -> None:
    mtls = files_from_settings(settings)  # before anything starts: bad settings stop here
    if settings.migrate_on_start:
        await apply_migrations(settings.database_url)
    pool = await create_pool(settings.database_url)
    client = create_redis(settings.redis_url)
    feed = ChangeFeed(settings.database_url, heartbeat_s=settings.credential_feed_heartbeat_s)
    # Whether PostgreSQL answers: probed, and told by failed queries; health service name "postgres".
    database = DatabaseState()
    servicer = AuthServicer.from_settings(settings, pool, client, feed, database)
    # Keeps the Redis copy of the revocations complete (after an outage, or a Redis that lost its data)
    # and deletes expired ones.
    stop_upkeep = asyncio.Event()
    upkeep = asyncio.create_task(
        servicer.revocations.maintain(settings.revocation_cleanup_interval_s, stop=stop_upkeep)
    )
    # Tells gateways which cached Authenticate answers to forget (WatchCredentials).
    stop_relay = asyncio.Event()
    relay = asyncio.create_task(feed.run(stop_relay))
    # genai_postgres_up and the database's size, for the PostgreSQL alerts.
    watch = asyncio.create_task(watch_pool(pool, database))

    async def close() -> None:
        stop_upkeep.set()
        # Its current round is bounded by the Redis and PostgreSQL timeouts. Not cancelled: see maintain().
        _, running = await asyncio.wait({upkeep, relay}, timeout=UPKEEP_STOP_S)
        if running:
            logger.warning("revocation upkeep or credential feed did not stop within %s s", UPKEEP_STOP_S)
        watch.cancel()
        servicer.close()
        await pool.close()
        await client.aclose()

    await serve(
        name="auth",
        listen=settings.listen,
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        metrics_port=settings.metrics_port,
        # Only the gateway calls this service; over mTLS, every other identity is refused.
        mtls=mtls,
        callers={SERVICE_NAME: {"gateway"}},
        on_stop=close,
        # The streams of WatchCredentials last as long as the feed does.
        on_draining=stop_relay.set,
        # A database outage is UNAVAILABLE with a message for the caller, never an internal error.
        dependency_errors=DependencyErrors(DATABASE_ERRORS, DATABASE_DOWN, database.failed),
        dependencies={"postgres": lambda: database.up},
    )


def main() -> None:
    settings = load_settings(AuthSettings)
    setup_logging("auth", settings.log_level)
    return_hashing_memory()
    runner.run(run(settings))
