"""Plain completions, vLLM's extra sampling fields and the caller's user, as the upstream receives them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_vllmsim.launcher import SimulatorProcess

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]


async def last_request(sim: SimulatorProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return dict((await client.get(sim.base_url + "/sim/stats")).json()["last_requests"][-1])


async def test_prompt_goes_to_completions(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    reply = await stub.Generate(
        inference_pb2.GenerateRequest(prompt="Once upon a time", max_tokens=5), timeout=10
    )
    assert len(reply.text.split()) == 5
    body = await last_request(sim)
    assert body["prompt"] == "Once upon a time" and "messages" not in body


async def test_prompt_streams_from_completions(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    chunks = [
        c
        async for c in stub.GenerateStream(
            inference_pb2.GenerateRequest(prompt="Hi", max_tokens=4), timeout=10
        )
    ]
    text = "".join(c.text for c in chunks)
    assert len(text.split()) == 4
    assert chunks[-1].finish_reason == "length"


async def test_extra_fields_and_user_are_passed_on(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    extra = {"top_k": 20, "repetition_penalty": 1.1, "model": "not-this-one", "stream": True}
    await stub.Generate(
        inference_pb2.GenerateRequest(
            messages=[inference_pb2.ChatMessage(role="user", content="hi")],
            max_tokens=3,
            user="user-42",
            extra_json=json.dumps(extra),
        ),
        timeout=10,
    )
    body = await last_request(sim)
    assert body["top_k"] == 20 and body["repetition_penalty"] == 1.1
    assert body["user"] == "user-42"
    # Extra fields never replace what the adapter sets itself.
    assert body["model"] == "sim-model" and "stream" not in body


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt": "x", "messages": [inference_pb2.ChatMessage(role="user", content="y")]},
        {"prompt": "x", "extra_json": "[1, 2]"},
        {"prompt": "x", "extra_json": "{not json"},
    ],
)
async def test_bad_requests_are_invalid_argument(
    adapter: AdapterFactory, sim: SimulatorProcess, request_fields: dict[str, Any]
) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Generate(inference_pb2.GenerateRequest(**request_fields), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
