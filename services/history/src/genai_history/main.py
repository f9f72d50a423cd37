"""Entry point: settings, logging, migrations, the database pool, then the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from genai.history.v1 import history_pb2_grpc

from genai_common import runner
from genai_common.db import DATABASE_ERRORS, DatabaseState, create_pool, migrate, watch_pool
from genai_common.grpc_server import DependencyErrors, serve
from genai_common.logs import setup_logging
from genai_common.mtls import files_from_settings
from genai_common.settings import load_settings
from genai_common.waiting import within
from genai_history import retention
from genai_history.servicer import DATABASE_UNAVAILABLE, SERVICE_NAME, HistoryServicer
from genai_history.settings import HistorySettings
from genai_history.store import COMPONENT, MIGRATIONS_DIR, HistoryStore

logger = logging.getLogger(__name__)

POOL_CLOSE_TIMEOUT_S = 5.0


async def run(settings: HistorySettings) -> None:
    mtls = files_from_settings(settings)  # before anything starts: bad settings stop here
    dsn = settings.database_url.get_secret_value()
    if settings.migrate_on_start:
        applied = await migrate(dsn, COMPONENT, MIGRATIONS_DIR)
        logger.info("migrations applied: %d", len(applied))
    pool = await create_pool(dsn, max_size=settings.pool_max_size)
    servicer = HistoryServicer(HistoryStore(pool), settings)
    # genai_postgres_up and the database's size, for the PostgreSQL alerts; health service "postgres".
    database = DatabaseState()
    watch = asyncio.create_task(watch_pool(pool, database))

    def register(server: grpc.aio.Server) -> None:
        history_pb2_grpc.add_HistoryServiceServicer_to_server(servicer, server)

    cleanup = None
    if retention.enabled(settings):
        cleanup = asyncio.create_task(retention.run_forever(pool, settings))
        logger.info(
            "retention on: conversations after %d days, audit events after %d days (0 = never)",
            settings.retention_days,
            settings.audit_retention_days,
        )

    async def stop_cleanup() -> None:
        for task in (cleanup, watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close_pool() -> None:
        await stop_cleanup()
        try:
            await within(pool.close(), POOL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("database pool did not close in %ss; terminating it", POOL_CLOSE_TIMEOUT_S)
            pool.terminate()

    try:
        await serve(
            name="history",
            listen=settings.listen,
            register=register,
            service_names=[SERVICE_NAME],
            metrics_port=settings.metrics_port,
            # Only the gateway calls this service; over mTLS, every other identity is refused.
            mtls=mtls,
            callers={SERVICE_NAME: {"gateway"}},
            on_stop=close_pool,
            # A database outage is UNAVAILABLE with a message for the caller, never an internal error.
            dependency_errors=DependencyErrors(DATABASE_ERRORS, DATABASE_UNAVAILABLE, database.failed),
            dependencies={"postgres": lambda: database.up},
        )
    except BaseException:
        # serve() closes the pool through on_stop only on a clean stop; a failed start must not leak it.
        await stop_cleanup()
        if not pool.is_closing():
            pool.terminate()
        raise


def main() -> None:
    settings = load_settings(HistorySettings)
    setup_logging("history", settings.log_level)
    runner.run(run(settings))
