"""Reading upstream error bodies in every shape, and retrying only failed connection attempts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_adapter.upstream import UpstreamStatus, error_message, map_error
from genai_vllmsim.launcher import SimulatorProcess

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]
# counting_proxy(url) -> a relay whose `url` leads to that server and whose `opened` counts connections.
ProxyFactory = Callable[[str], Awaitable[Any]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # vLLM now (and OpenAI, llama.cpp).
        (
            {"error": {"message": "bad temperature", "type": "BadRequestError", "param": None, "code": 400}},
            "bad temperature",
        ),
        # Older vLLM.
        (
            {
                "object": "error",
                "message": "bad top_p",
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
            "bad top_p",
        ),
        # vLLM's API-key middleware.
        ({"error": "Unauthorized"}, "Unauthorized"),
        # FastAPI's request validation.
        ({"detail": "Not Found"}, "Not Found"),
    ],
)
def test_error_message_shapes(body: dict[str, object], message: str) -> None:
    assert error_message(json.dumps(body).encode()) == message


def test_error_message_of_plain_text_is_cut_short() -> None:
    assert error_message(b"  upstream exploded \n") == "upstream exploded"
    assert len(error_message(b"x" * 100_000)) == 1000


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (401, grpc.StatusCode.UNAVAILABLE),
        (403, grpc.StatusCode.UNAVAILABLE),
        (500, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (418, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_status_mapping(status: int, code: grpc.StatusCode) -> None:
    assert map_error(UpstreamStatus(status, "upstream says no")).code == code


def test_client_errors_keep_the_upstream_message_and_server_errors_do_not() -> None:
    assert (
        map_error(UpstreamStatus(400, "max_tokens must be at least 1")).message
        == "max_tokens must be at least 1"
    )
    assert map_error(UpstreamStatus(500, "Traceback: secret internals")).message == "model server unavailable"


@pytest.mark.parametrize("retries", [0, 2])
async def test_only_failed_connections_are_retried(
    adapter: AdapterFactory, dead_upstream_url: str, caplog: pytest.LogCaptureFixture, retries: int
) -> None:
    # Health checks far apart: only the request's own connection attempts are counted here.
    stub = await adapter(dead_upstream_url, model="m", retries=retries, health_interval_s=60)
    with caplog.at_level(logging.DEBUG, logger="genai_adapter.upstream"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(
                inference_pb2.GenerateRequest(messages=[inference_pb2.ChatMessage(role="user")])
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    failed = [r for r in caplog.records if r.getMessage().startswith("connecting to the model server failed")]
    assert len(failed) == retries


async def test_connected_requests_are_not_retried(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--error-rate", "1", "--error-kind", "reset")
    stub = await adapter(sim.url, model="sim-model", retries=3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(inference_pb2.GenerateRequest(messages=[inference_pb2.ChatMessage(role="user")]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sim.stats()["started"] == 1


async def test_streams_reuse_pooled_connections(
    adapter: AdapterFactory, sim: SimulatorProcess, counting_proxy: ProxyFactory
) -> None:
    proxy = await counting_proxy(sim.url)
    # Health checks (on connections of their own) far apart: only the streams' connections are counted.
    stub = await adapter(proxy.url, model="sim-model", health_interval_s=60)
    request = inference_pb2.GenerateRequest(messages=[inference_pb2.ChatMessage(role="user", content="hi")])
    checks = proxy.opened
    for _ in range(3):
        chunks = [c async for c in stub.GenerateStream(request, timeout=10)]
        assert chunks[-1].finish_reason == "stop"
    # The body is read to its end after [DONE], so the connection goes back to the pool.
    assert proxy.opened - checks == 1


@pytest.mark.parametrize(("max_connections", "opened"), [(40, 40), (17, 17)])
async def test_concurrent_streams_use_connections_up_to_the_cap(
    adapter: AdapterFactory,
    simulators: Callable[..., SimulatorProcess],
    counting_proxy: ProxyFactory,
    max_connections: int,
    opened: int,
) -> None:
    # 40 streams at once use as many connections as the cap allows, and no more: the others wait for one.
    # Each stream lasts two seconds, so all 40 are open at once even on a loaded machine (a stream that
    # ended before the last one started would hand its connection on, and fewer would be opened).
    sim = simulators("--itl-ms", "20", "--output-tokens", "100", "--max-num-seqs", "100")
    proxy = await counting_proxy(sim.url)
    stub = await adapter(
        proxy.url,
        model="sim-model",
        max_connections=max_connections,
        max_concurrent=100,
        health_interval_s=60,
    )
    checks = proxy.opened
    request = inference_pb2.GenerateRequest(messages=[inference_pb2.ChatMessage(role="user", content="hi")])

    async def one() -> str:
        chunks = [c async for c in stub.GenerateStream(request, timeout=30)]
        return chunks[-1].finish_reason

    reasons = await asyncio.gather(*(one() for _ in range(40)))
    assert reasons == ["stop"] * 40
    assert proxy.opened - checks == opened
