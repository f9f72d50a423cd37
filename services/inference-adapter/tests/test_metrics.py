"""The model path's metrics: time to first token, gaps, whole generations, tokens, errors by kind,
cancellations, and the request id sent upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc
from prometheus_client import REGISTRY

from genai_common.request_id import current_request_id
from genai_vllmsim.launcher import SimulatorProcess

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]


def ask() -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        messages=[inference_pb2.ChatMessage(role="user", content="hello there model")], max_tokens=0
    )


async def wait_for_stats(sim: SimulatorProcess, **expected: int) -> dict[str, Any]:
    stats: dict[str, Any] = {}
    for _ in range(250):
        stats = await asyncio.to_thread(sim.stats)
        if all(stats[key] == want for key, want in expected.items()):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"{expected} never reached: {stats}")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_streamed_generation_is_measured(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--output-tokens", "6", "--itl-ms", "20")
    stub = await adapter(sim.url, model="sim-model")
    before = {
        "ttft": value("genai_adapter_time_to_first_token_seconds_count"),
        "itl": value("genai_adapter_inter_token_seconds_count"),
        "whole": value("genai_adapter_generation_seconds_count", method="GenerateStream"),
        "prompt": value("genai_adapter_prompt_tokens_total"),
        "completion": value("genai_adapter_completion_tokens_total"),
    }
    [chunk async for chunk in stub.GenerateStream(ask(), timeout=10)]
    assert value("genai_adapter_time_to_first_token_seconds_count") == before["ttft"] + 1
    assert value("genai_adapter_inter_token_seconds_count") == before["itl"] + 5
    assert value("genai_adapter_generation_seconds_count", method="GenerateStream") == before["whole"] + 1
    assert value("genai_adapter_prompt_tokens_total") == before["prompt"] + 3  # "hello there model"
    assert value("genai_adapter_completion_tokens_total") == before["completion"] + 6
    # Gaps of about 20 ms: the histogram's sum grew by about 5 x 20 ms.
    assert value("genai_adapter_inter_token_seconds_sum") > 0


async def test_the_request_id_goes_upstream(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--output-tokens", "2")
    stub = await adapter(sim.url, model="sim-model")
    token = current_request_id.set("rid-upstream-1")
    try:
        # The client interceptor sends it to the adapter, whose upstream client sends it on.
        response = await stub.Generate(ask(), timeout=10)
    finally:
        current_request_id.reset(token)
    assert response.text
    stats = await wait_for_stats(sim, started=1)
    assert stats["last_request_ids"] == ["rid-upstream-1"]


async def test_upstream_errors_are_counted_by_kind(adapter: AdapterFactory, dead_upstream_url: str) -> None:
    before = value("genai_adapter_upstream_errors_total", kind="connect")
    stub = await adapter(dead_upstream_url, model="m", connect_timeout_s=1, retries=0)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Generate(ask(), timeout=10)
    assert value("genai_adapter_upstream_errors_total", kind="connect") == before + 1


async def test_a_caller_leaving_is_counted_as_a_cancellation(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--itl-ms", "50", "--output-tokens", "200")
    stub = await adapter(sim.url, model="sim-model")
    before = value("genai_adapter_cancelled_total", stage="generating")
    call = stub.GenerateStream(ask(), timeout=30)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    await wait_for_stats(sim, cancelled=1, running=0)
    for _ in range(100):
        if value("genai_adapter_cancelled_total", stage="generating") == before + 1:
            break
        await asyncio.sleep(0.02)
    assert value("genai_adapter_cancelled_total", stage="generating") == before + 1
