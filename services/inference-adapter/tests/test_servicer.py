"""The adapter on an in-process gRPC server, against real simulator processes (tools/vllm-sim)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_vllmsim.launcher import SimulatorProcess

# The `adapter` fixture: adapter(upstream_url, **settings) -> a stub of a freshly started adapter.
AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]

MESSAGES = [
    inference_pb2.ChatMessage(role="system", content="be brief"),
    inference_pb2.ChatMessage(role="user", content="tell me about foxes"),
]


def ask(**fields: Any) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(messages=MESSAGES, **fields)


async def sim_stats(sim: SimulatorProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(sim.base_url + "/sim/stats")).json()


async def wait_for_stats(sim: SimulatorProcess, **expected: int) -> dict[str, Any]:
    """Poll the simulator until its counters match; the upstream side of a cancel is asynchronous."""
    stats: dict[str, Any] = {}
    for _ in range(500):
        stats = await sim_stats(sim)
        if all(stats[k] == v for k, v in expected.items()):
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"simulator never reached {expected}: {stats}")


async def test_generate(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    reply = await stub.Generate(ask(), timeout=10)
    assert len(reply.text.split()) == 8
    assert reply.finish_reason == "stop"
    # No model configured: the first one the upstream lists.
    assert reply.model == "sim-model"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (6, 8, 14)
    [body] = (await sim_stats(sim))["last_requests"]
    assert body == {
        "model": "sim-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "tell me about foxes"},
        ],
    }


async def test_generate_passes_only_what_is_set(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url, model="sim-model")
    reply = await stub.Generate(
        ask(max_tokens=5, temperature=0.7, top_p=0.9, stop=["zzz"], seed=42), timeout=10
    )
    assert len(reply.text.split()) == 5
    assert reply.finish_reason == "length"
    [body] = (await sim_stats(sim))["last_requests"]
    assert body["max_tokens"] == 5
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.9
    assert body["stop"] == ["zzz"]
    assert body["seed"] == 42
    assert "stream" not in body


async def test_generate_stream(adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--output-tokens", "6", "--itl-ms", "50")
    stub = await adapter(sim.url)
    loop = asyncio.get_running_loop()
    chunks: list[tuple[float, inference_pb2.GenerateChunk]] = []
    async for chunk in stub.GenerateStream(ask(), timeout=10):
        chunks.append((loop.time(), chunk))
    *texts, (_, last) = chunks
    assert len(texts) == 6
    assert all(c.text and not c.finish_reason for _, c in texts)
    assert all(c.model == "sim-model" for _, c in chunks)
    assert last.text == ""
    assert last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (6, 6, 12)
    # Streamed as generated, not buffered: the text arrives spread over the inter-token gaps.
    assert texts[-1][0] - texts[0][0] >= 0.5 * 5 * 0.05

    streamed = "".join(c.text for _, c in texts)
    whole = await stub.Generate(ask(), timeout=10)
    assert streamed == whole.text
    body = (await sim_stats(sim))["last_requests"][0]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_stream_without_upstream_usage(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--no-stream-usage", "--output-tokens", "3")
    stub = await adapter(sim.url)
    chunks = [c async for c in stub.GenerateStream(ask(), timeout=10)]
    assert len(chunks) == 4
    assert chunks[-1].finish_reason == "stop"
    # Counted by the server's tokenizer instead: the prompt's text and template, and the answer.
    usage = chunks[-1].usage
    assert usage.completion_tokens == 3, usage
    assert usage.prompt_tokens > 0, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_list_models(adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--model", "listed-model", "--max-model-len", "2048")
    stub = await adapter(sim.url)
    reply = await stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    [model] = reply.models
    assert (model.id, model.owned_by, model.max_model_len) == ("listed-model", "vllm", 2048)
    assert model.created > 0


async def test_unknown_model_is_not_found(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(ask(model="no-such-model"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "The model `no-such-model` does not exist."
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [c async for c in stub.GenerateStream(ask(model="no-such-model"), timeout=10)]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_too_long_for_the_model_is_invalid_argument(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(ask(max_tokens=5000), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum context length is 4096 tokens" in err.value.details()


async def test_empty_messages_never_reach_the_upstream(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(inference_pb2.GenerateRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stats = await sim_stats(sim)
    assert (stats["started"], stats["last_requests"]) == (0, [])


FAULTS = [
    pytest.param(("500",), grpc.StatusCode.UNAVAILABLE, "model server unavailable", id="500"),
    pytest.param(("429",), grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded", id="429"),
    pytest.param(("400",), grpc.StatusCode.INVALID_ARGUMENT, "Simulated bad request", id="400"),
    pytest.param(
        ("400", "--error-format", "legacy"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Simulated bad request",
        id="400-legacy-shape",
    ),
    # Tokens 50 ms apart, as a real server sends them: the HTTP client drops what it had buffered but
    # not yet read when the connection breaks, so a reset in the same read as the second token (tokens
    # with no time between them, on a busy machine) would take that token with it.
    pytest.param(
        ("reset", "--itl-ms", "50"), grpc.StatusCode.UNAVAILABLE, "model server unavailable", id="reset"
    ),
]


@pytest.mark.parametrize(("fault", "code", "message"), FAULTS)
async def test_upstream_faults_map_to_status(
    adapter: AdapterFactory,
    simulators: Callable[..., SimulatorProcess],
    fault: tuple[str, ...],
    code: grpc.StatusCode,
    message: str,
) -> None:
    kind, *extra = fault
    sim = simulators("--error-rate", "1", "--error-kind", kind, *extra)
    stub = await adapter(sim.url, model="sim-model", retries=1)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(ask(), timeout=10)
    assert err.value.code() == code
    assert message in err.value.details()

    received: list[inference_pb2.GenerateChunk] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for chunk in stub.GenerateStream(ask(), timeout=10):
            received.append(chunk)
    assert err.value.code() == code
    assert message in err.value.details()
    if kind == "reset":
        # The connection dropped after two tokens, which the caller got before the error.
        assert len(received) == 2
    # An answer was received each time, so nothing was retried.
    assert (await sim_stats(sim))["started"] == 2


async def test_wrong_api_key(adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--api-key", "the-upstream-key")
    without = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await without.Generate(ask(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "upstream rejected the adapter's credentials"

    with_key = await adapter(sim.url, upstream_api_key="the-upstream-key")
    assert (await with_key.Generate(ask(), timeout=10)).text
    chunks = [c async for c in with_key.GenerateStream(ask(), timeout=10)]
    assert chunks[-1].finish_reason == "stop"


async def test_upstream_down_is_unavailable(adapter: AdapterFactory, dead_upstream_url: str) -> None:
    stub = await adapter(dead_upstream_url, model="m", connect_timeout_s=1)
    calls = [
        stub.Generate(ask(), timeout=10),
        stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "model server unavailable"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [c async for c in stub.GenerateStream(ask(), timeout=10)]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # Without a configured model, resolving the default fails the same way.
    unresolved = await adapter(dead_upstream_url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unresolved.Generate(ask(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
async def test_caller_deadline_bounds_the_upstream_call(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess], streamed: bool
) -> None:
    sim = simulators("--ttft-ms", "5000")
    stub = await adapter(sim.url, model="sim-model")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if streamed:
            [c async for c in stub.GenerateStream(ask(), timeout=0.5)]
        else:
            await stub.Generate(ask(), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The adapter gave up on the upstream too, instead of waiting out the 5 s.
    await wait_for_stats(sim, cancelled=1, running=0, finished=0)


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
async def test_silent_upstream_hits_read_timeout(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess], streamed: bool
) -> None:
    sim = simulators("--ttft-ms", "5000")
    stub = await adapter(sim.url, model="sim-model", read_timeout_s=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if streamed:
            [c async for c in stub.GenerateStream(ask(), timeout=10)]
        else:
            await stub.Generate(ask(), timeout=10)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "model server timed out"
    await wait_for_stats(sim, cancelled=1, running=0)


async def test_total_timeout_ends_a_trickling_stream(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--itl-ms", "50", "--output-tokens", "200")
    stub = await adapter(sim.url, model="sim-model", total_timeout_s=0.5)
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.GenerateStream(ask(), timeout=10):
            received += 1
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "model server timed out"
    # Tokens kept coming (no read timeout), but the whole call was cut short.
    assert 0 < received < 200
    await wait_for_stats(sim, cancelled=1, running=0)


async def test_caller_cancelling_a_stream_frees_the_upstream(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--itl-ms", "50", "--output-tokens", "200")
    stub = await adapter(sim.url, model="sim-model")
    call = stub.GenerateStream(ask(), timeout=30)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    stats = await wait_for_stats(sim, cancelled=1, running=0)
    assert stats["finished"] == 0
    assert stats["generation_tokens"] < 200


async def test_caller_cancelling_generate_frees_the_upstream(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--ttft-ms", "5000")
    stub = await adapter(sim.url, model="sim-model")
    call = stub.Generate(ask(), timeout=30)
    await wait_for_stats(sim, running=1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_for_stats(sim, cancelled=1, running=0, finished=0)
