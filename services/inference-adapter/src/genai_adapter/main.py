"""Entry point: settings, logging, the model server replicas and the fair queue, then the gRPC server."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from genai.inference.v1 import inference_pb2_grpc

from genai_adapter.replicas import ReplicaSet
from genai_adapter.scheduler import FairScheduler
from genai_adapter.servicer import SERVICE_NAME, InferenceServicer
from genai_adapter.settings import AdapterSettings
from genai_adapter.shared_queue import SharedScheduler, shared_scheduler
from genai_common import runner
from genai_common.grpc_server import serve
from genai_common.logs import setup_logging
from genai_common.mtls import files_from_settings
from genai_common.settings import load_settings

logger = logging.getLogger(__name__)


async def run(settings: AdapterSettings) -> None:
    mtls = files_from_settings(settings)  # before anything starts: bad settings stop here
    local = FairScheduler(settings.max_concurrent, settings.queue_max, settings.queue_timeout_s)
    # Shared with the other adapters in front of the same replicas; the local queue while Redis is away.
    shared = (
        shared_scheduler(
            settings.redis_url, settings.redis_timeout_s, local, cooldown_s=settings.redis_cooldown_s
        )
        if settings.redis_url
        else None
    )
    scheduler: FairScheduler | SharedScheduler = shared or local
    # The fair queue admits max_concurrent generations per replica in rotation: resized as replicas come
    # and go (their health checks, a new list).
    replicas = ReplicaSet(settings, on_capacity=scheduler.resize)
    servicer = InferenceServicer(replicas, scheduler, settings.model)

    def register(server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)

    async def stop() -> None:
        await replicas.aclose()
        if shared is not None:
            await shared.aclose()

    try:
        await replicas.start()
        if shared is not None:
            await shared.start()
        # SIGHUP: read GENAI_ADAPTER_UPSTREAM_URLS_FILE (and resolve the names) again now.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, replicas.reload)
        logger.info(
            "model servers %s, default model %s",
            ", ".join(r.name for r in replicas.replicas),
            settings.model or "(first listed)",
        )
        logger.info(
            "at most %s generations per model server (%s now), up to %s waiting for %s s",
            settings.max_concurrent,
            scheduler.max_concurrent,
            settings.queue_max,
            settings.queue_timeout_s,
        )
        await serve(
            name="inference-adapter",
            listen=settings.listen,
            register=register,
            service_names=[SERVICE_NAME],
            metrics_port=settings.metrics_port,
            # Only the gateway calls this service; over mTLS, every other identity is refused.
            mtls=mtls,
            callers={SERVICE_NAME: {"gateway"}},
            on_stop=stop,
        )
    finally:
        # A failed start never reaches on_stop; closing twice is harmless.
        await stop()


def main() -> None:
    settings = load_settings(AdapterSettings)
    setup_logging("inference-adapter", settings.log_level)
    runner.run(run(settings))
