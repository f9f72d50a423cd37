"""CountTokens against real simulator processes (vLLM's /tokenize) and servers without a tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_vllmsim.launcher import SimulatorProcess

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]


def count(*texts: str, model: str = "") -> inference_pb2.CountTokensRequest:
    return inference_pb2.CountTokensRequest(model=model, texts=list(texts))


async def test_counts_each_text_with_vllms_tokenizer(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--max-model-len", "2048", "--api-key", "the-upstream-key")
    stub = await adapter(sim.url, upstream_api_key="the-upstream-key")
    reply = await stub.CountTokens(count("tell me about foxes", "", "one", "a b  c\nd e"), timeout=10)
    assert list(reply.counts) == [4, 0, 1, 5]
    assert reply.max_model_len == 2048
    # The same count the server charges for a prompt.
    answer = await stub.Generate(inference_pb2.GenerateRequest(prompt="tell me about foxes"), timeout=10)
    assert answer.usage.prompt_tokens == reply.counts[0]


async def test_many_texts_keep_their_order(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    texts = [" ".join(["w"] * n) for n in range(200)]
    reply = await stub.CountTokens(count(*texts), timeout=10)
    assert list(reply.counts) == list(range(200))


async def test_no_texts_still_tell_the_context_length(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    reply = await stub.CountTokens(count(), timeout=10)
    assert (list(reply.counts), reply.max_model_len) == ([], 4096)


async def test_the_tokenizer_is_found_once(
    adapter: AdapterFactory, sim: SimulatorProcess, caplog: pytest.LogCaptureFixture
) -> None:
    stub = await adapter(sim.url)
    with caplog.at_level(logging.INFO, logger="genai_adapter.upstream"):
        for _ in range(3):
            await stub.CountTokens(count("hello there"), timeout=10)
    found = [r.getMessage() for r in caplog.records if "counts tokens" in r.getMessage()]
    assert found == ["the model server counts tokens vllm's way"]


async def test_without_a_tokenizer_it_is_unimplemented(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess]
) -> None:
    sim = simulators("--no-tokenize")
    stub = await adapter(sim.url)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CountTokens(count("hello"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "exposes no tokenizer" in err.value.details()


async def test_unknown_model_is_not_found(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CountTokens(count("hello", model="gpt-9"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "The model `gpt-9` does not exist."


async def test_upstream_down_is_unavailable(adapter: AdapterFactory, dead_upstream_url: str) -> None:
    stub = await adapter(dead_upstream_url, model="m", connect_timeout_s=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CountTokens(count("hello"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_too_many_texts_are_invalid_argument(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CountTokens(count(*["x"] * 1025), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
