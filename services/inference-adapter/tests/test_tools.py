"""Structured output and tool calls through the adapter, against real simulator processes."""

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

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
MESSAGES = [inference_pb2.ChatMessage(role="user", content="weather in Paris?")]


def ask(**fields: Any) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(messages=MESSAGES, **fields)


async def last_request(sim: SimulatorProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return dict((await client.get(sim.base_url + "/sim/stats")).json()["last_requests"][-1])


async def test_response_format_is_passed_on_and_answered(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    reply = await stub.Generate(ask(response_format_json=json.dumps(response_format)), timeout=10)
    answer = json.loads(reply.text)
    assert set(answer) == {"city", "unit"} and answer["unit"] in ("celsius", "fahrenheit")
    assert (reply.finish_reason, list(reply.tool_calls)) == ("stop", [])
    assert (await last_request(sim))["response_format"] == response_format

    chunks = [
        c
        async for c in stub.GenerateStream(ask(response_format_json=json.dumps(response_format)), timeout=10)
    ]
    assert "".join(c.text for c in chunks) == reply.text
    assert chunks[-1].finish_reason == "stop"


async def test_tool_call_whole(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    reply = await stub.Generate(ask(tools_json=json.dumps(TOOLS), tool_choice_json='"required"'), timeout=10)
    [call] = reply.tool_calls
    assert call.index == 0 and call.id.startswith("chatcmpl-tool-")
    assert (call.type, call.name) == ("function", "get_weather")
    assert set(json.loads(call.arguments)) == {"city", "unit"}
    assert (reply.text, reply.finish_reason) == ("", "tool_calls")
    assert reply.usage.completion_tokens > 0
    body = await last_request(sim)
    assert (body["tools"], body["tool_choice"]) == (TOOLS, "required")


async def test_tool_call_streamed_in_pieces(adapter: AdapterFactory, sim: SimulatorProcess) -> None:
    stub = await adapter(sim.url)
    request = ask(
        tools_json=json.dumps(TOOLS),
        tool_choice_json='{"type": "function", "function": {"name": "get_weather"}}',
    )
    chunks = [c async for c in stub.GenerateStream(request, timeout=10)]
    *pieces, last = chunks
    assert all(len(c.tool_calls) == 1 and not c.text for c in pieces)
    first, *fragments = [c.tool_calls[0] for c in pieces]
    # The first piece names the call; the rest carry only argument fragments of the same index.
    assert first.id.startswith("chatcmpl-tool-") and (first.type, first.name, first.arguments) == (
        "function",
        "get_weather",
        "",
    )
    assert fragments and all((f.index, f.id, f.type, f.name) == (0, "", "", "") for f in fragments)
    arguments = "".join(f.arguments for f in fragments)
    assert set(json.loads(arguments)) == {"city", "unit"}
    # A named call finishes with "stop", as vLLM and OpenAI do: callers look at tool_calls, not the reason.
    assert last.finish_reason == "stop" and not last.tool_calls
    assert last.usage.completion_tokens == len(fragments)

    whole = await stub.Generate(request, timeout=10)
    assert whole.tool_calls[0].arguments == arguments


async def test_tool_turns_go_upstream_in_openais_shape(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    call = inference_pb2.ToolCall(id="call-1", name="get_weather", arguments='{"city": "Paris"}')
    messages = [
        *MESSAGES,
        inference_pb2.ChatMessage(role="assistant", tool_calls=[call]),
        inference_pb2.ChatMessage(role="tool", tool_call_id="call-1", content="sunny"),
    ]
    request = inference_pb2.GenerateRequest(messages=messages, tools_json=json.dumps(TOOLS))
    reply = await stub.Generate(request, timeout=10)
    # Given the tool's answer, the model (left to choose) answers in words.
    assert reply.text and not reply.tool_calls and reply.finish_reason == "stop"
    body = await last_request(sim)
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call-1"},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"response_format_json": "{not json"}, "response_format_json is not valid JSON"),
        ({"response_format_json": '"json"'}, "response_format_json must be a JSON object"),
        ({"tools_json": "{}"}, "tools_json must be a JSON array"),
        ({"tool_choice_json": "auto"}, "tool_choice_json is not valid JSON"),
        ({"tool_choice_json": "[]"}, "tool_choice_json must be a JSON string or object"),
    ],
)
async def test_malformed_fields_are_invalid_argument(
    adapter: AdapterFactory, sim: SimulatorProcess, fields: dict[str, str], message: str
) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(ask(**fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert (await stub_stats(sim))["started"] == 0


async def test_tools_with_a_prompt_are_invalid_argument(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(
            inference_pb2.GenerateRequest(prompt="hi", tools_json=json.dumps(TOOLS)), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_extra_json_cannot_set_the_structured_fields(
    adapter: AdapterFactory, sim: SimulatorProcess
) -> None:
    stub = await adapter(sim.url)
    extra = {"tools": TOOLS, "response_format": {"type": "json_object"}, "top_k": 5}
    reply = await stub.Generate(ask(extra_json=json.dumps(extra)), timeout=10)
    assert not reply.tool_calls
    body = await last_request(sim)
    assert "tools" not in body and "response_format" not in body and body["top_k"] == 5


@pytest.mark.parametrize("streamed", [False, True], ids=["Generate", "GenerateStream"])
async def test_unsupported_tool_choice_is_invalid_argument_with_the_servers_message(
    adapter: AdapterFactory, simulators: Callable[..., SimulatorProcess], streamed: bool
) -> None:
    sim = simulators("--no-auto-tool-choice")
    stub = await adapter(sim.url)
    request = ask(tools_json=json.dumps(TOOLS), tool_choice_json='"auto"')
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if streamed:
            [c async for c in stub.GenerateStream(request, timeout=10)]
        else:
            await stub.Generate(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requires --enable-auto-tool-choice" in err.value.details()


async def stub_stats(sim: SimulatorProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return dict((await client.get(sim.base_url + "/sim/stats")).json())
