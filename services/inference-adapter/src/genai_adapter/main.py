"""Entry point: settings, logging, the shared HTTP client to the model server, then the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from genai.inference.v1 import inference_pb2_grpc

from genai_adapter.scheduler import FairScheduler
from genai_adapter.servicer import SERVICE_NAME, InferenceServicer
from genai_adapter.settings import AdapterSettings
from genai_adapter.upstream import Upstream
from genai_common import runner
from genai_common.grpc_server import serve
from genai_common.logs import setup_logging
from genai_common.mtls import files_from_settings
from genai_common.settings import load_settings

logger = logging.getLogger(__name__)


async def run(settings: AdapterSettings) -> None:
    mtls = files_from_settings(settings)  # before anything starts: bad settings stop here
    upstream = Upstream(settings)
    scheduler = FairScheduler(settings.max_concurrent, settings.queue_max, settings.queue_timeout_s)
    servicer = InferenceServicer(upstream, scheduler, settings.model)

    def register(server: grpc.aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)

    logger.info("upstream %s, default model %s", settings.upstream_url, settings.model or "(first listed)")
    logger.info(
        "at most %s generations upstream, up to %s waiting for %s s",
        settings.max_concurrent,
        settings.queue_max,
        settings.queue_timeout_s,
    )
    # genai_adapter_upstream_up, for the "model down" alert.
    watch = asyncio.create_task(upstream.watch())
    try:
        await serve(
            name="inference-adapter",
            listen=settings.listen,
            register=register,
            service_names=[SERVICE_NAME],
            metrics_port=settings.metrics_port,
            # Only the gateway calls this service; over mTLS, every other identity is refused.
            mtls=mtls,
            callers={SERVICE_NAME: {"gateway"}},
            on_stop=upstream.aclose,
        )
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        # A failed start never reaches on_stop; closing twice is harmless.
        await upstream.aclose()


def main() -> None:
    settings = load_settings(AdapterSettings)
    setup_logging("inference-adapter", settings.log_level)
    runner.run(run(settings))
