"""Structured output, tool calls and /tokenize, in vLLM's shapes, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest

from genai_vllmsim import structured
from genai_vllmsim.launcher import SimulatorProcess

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the weather"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "unit"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "weather", "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
SCHEMAS = [
    WEATHER,
    {"type": "string"},
    {"type": "number", "minimum": 2.5, "maximum": 3},
    {"type": "integer"},
    {"type": "boolean"},
    {"type": "array", "items": {"type": "integer"}, "minItems": 3},
    {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 1},
    {"type": ["null", "string"]},
    {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["id"],
    },
    # What pydantic generates for nested models.
    {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "type": "object",
        "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/Point"}}},
        "required": ["points"],
    },
    {"type": "string", "maxLength": 3},
    {"const": 42},
    {},
]


def sse_events(response: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def chat(sim: SimulatorProcess, **fields: Any) -> httpx.Response:
    return httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES, **fields})


def chat_stream(sim: SimulatorProcess, **fields: Any) -> list[Any]:
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}, **fields}
    with httpx.stream("POST", sim.url + "/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        return sse_events(resp)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_values_validate_against_their_schema(schema: dict[str, Any]) -> None:
    for seed in range(20):
        value = structured.value_for(schema, seed)
        jsonschema.validate(value, schema)
    assert structured.value_for(schema, 7) == structured.value_for(schema, 7)


def test_pieces_rebuild_the_answer() -> None:
    answer = structured.dumps(structured.value_for(WEATHER, 3))
    pieces = structured.pieces(answer)
    assert "".join(pieces) == answer
    assert len(pieces) > 1 and all(len(p.strip()) <= structured.PIECE_CHARS for p in pieces)


def test_json_object_whole_and_streamed(sim: SimulatorProcess) -> None:
    body = chat(sim, response_format={"type": "json_object"}).json()
    [choice] = body["choices"]
    answer = json.loads(choice["message"]["content"])
    assert isinstance(answer, dict) and answer
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(structured.pieces(choice["message"]["content"]))

    role, *content, usage, done = chat_stream(sim, response_format={"type": "json_object"})
    assert (role["choices"][0]["delta"], done) == ({"role": "assistant", "content": ""}, "[DONE]")
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert streamed == choice["message"]["content"]
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["usage"]["completion_tokens"] == len(content)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_json_schema_whole_and_streamed(sim: SimulatorProcess, endpoint: str) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    if endpoint == "chat":
        whole = chat(sim, response_format=response_format).json()["choices"][0]["message"]["content"]
        events = chat_stream(sim, response_format=response_format)
        streamed = "".join(e["choices"][0]["delta"]["content"] for e in events[1:-2])
    else:
        body = {"prompt": "the weather", "response_format": response_format}
        whole = httpx.post(sim.url + "/completions", json=body).json()["choices"][0]["text"]
        with httpx.stream("POST", sim.url + "/completions", json={**body, "stream": True}) as resp:
            streamed = "".join(e["choices"][0]["text"] for e in sse_events(resp)[:-1])
    jsonschema.validate(json.loads(whole), WEATHER)
    assert streamed == whole


def test_max_tokens_cuts_a_json_answer_short(sim: SimulatorProcess) -> None:
    body = chat(
        sim, response_format={"type": "json_schema", "json_schema": {"schema": WEATHER}}, max_tokens=2
    )
    [choice] = body.json()["choices"]
    assert choice["finish_reason"] == "length"
    assert body.json()["usage"]["completion_tokens"] == 2
    with pytest.raises(ValueError):
        json.loads(choice["message"]["content"])


@pytest.mark.parametrize(
    ("tool_choice", "name", "finish_reason", "content"),
    [
        (None, "get_weather", "tool_calls", None),
        ("auto", "get_weather", "tool_calls", None),
        ("required", "get_weather", "tool_calls", ""),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time", "stop", ""),
    ],
    ids=["default", "auto", "required", "named"],
)
def test_tool_call_whole(
    sim: SimulatorProcess, tool_choice: Any, name: str, finish_reason: str, content: str | None
) -> None:
    fields: dict[str, Any] = {"tools": TOOLS}
    if tool_choice is not None:
        fields["tool_choice"] = tool_choice
    body = chat(sim, **fields).json()
    [choice] = body["choices"]
    message = choice["message"]
    assert message["content"] == content
    [call] = message["tool_calls"]
    assert call["id"].startswith("chatcmpl-tool-")
    assert (call["type"], call["function"]["name"]) == ("function", name)
    arguments = json.loads(call["function"]["arguments"])
    jsonschema.validate(
        arguments, next(t for t in TOOLS if t["function"]["name"] == name)["function"]["parameters"]
    )
    # OpenAI's rule, which vLLM follows: a named call finishes with "stop".
    assert choice["finish_reason"] == finish_reason
    assert body["usage"]["completion_tokens"] == len(structured.pieces(call["function"]["arguments"]))


def test_tool_call_streamed_as_vllm_does(sim: SimulatorProcess) -> None:
    role, opening, *fragments, usage, done = chat_stream(sim, tools=TOOLS, tool_choice="required")
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    [first] = opening["choices"][0]["delta"]["tool_calls"]
    assert first["index"] == 0 and first["id"].startswith("chatcmpl-tool-") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    pieces = [f["choices"][0]["delta"]["tool_calls"] for f in fragments]
    assert all(
        list(p[0]) == ["index", "function"] and list(p[0]["function"]) == ["arguments"] for p in pieces
    )
    arguments = "".join(p[0]["function"]["arguments"] for p in pieces)
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert [f["choices"][0]["finish_reason"] for f in fragments][-2:] == [None, "tool_calls"]
    assert usage["usage"]["completion_tokens"] == len(fragments)
    assert done == "[DONE]"
    whole = chat(sim, tools=TOOLS, tool_choice="required").json()["choices"][0]["message"]
    assert whole["tool_calls"][0]["function"]["arguments"] == arguments


def test_after_a_tool_result_the_model_answers_in_words(sim: SimulatorProcess) -> None:
    call = {"id": "call-1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny and warm"},
    ]
    body = httpx.post(sim.url + "/chat/completions", json={"messages": messages, "tools": TOOLS}).json()
    [choice] = body["choices"]
    assert choice["message"]["content"] and choice["message"]["tool_calls"] == []
    assert choice["finish_reason"] == "stop"
    # The tool's answer counts as prompt.
    assert body["usage"]["prompt_tokens"] == 2 + 4 + 3
    # "none" never calls, whatever the conversation.
    plain = chat(sim, tools=TOOLS, tool_choice="none").json()["choices"][0]
    assert plain["message"]["tool_calls"] == [] and plain["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool_choice": "auto"}, "When using `tool_choice`, `tools` must be set."),
        ({"tools": []}, "`tools` must not be an empty array"),
        ({"tools": [{"type": "function"}]}, "Each tool must be"),
        ({"tools": TOOLS, "tool_choice": "always"}, "Invalid value for `tool_choice`: always!"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "does not match any of the specified `tools`",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type must be one of"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema must be an object"),
    ],
)
def test_refusals_in_vllms_shape(sim: SimulatorProcess, fields: dict[str, Any], message: str) -> None:
    resp = chat(sim, **fields)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["code"]) == ("BadRequestError", 400)
    assert sim.stats()["started"] == 0


def test_auto_tool_choice_can_be_switched_off(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--no-auto-tool-choice")
    for fields in ({"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "auto"}):
        resp = chat(sim, **fields)
        assert resp.status_code == 400
        assert resp.json()["error"]["message"] == structured.AUTO_TOOL_CHOICE_DISABLED
    # Named and required calls need no parser in vLLM, so they still work.
    assert chat(sim, tools=TOOLS, tool_choice="required").json()["choices"][0]["message"]["tool_calls"]


def test_tokenize_counts_as_prompts_are_counted(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--max-model-len", "2048", "--api-key", "sim-test-key")
    text = "tell me  about\nfoxes"
    # Like vLLM's, /tokenize is outside the API key's reach.
    resp = httpx.post(sim.base_url + "/tokenize", json={"model": "sim-model", "prompt": text})
    assert resp.status_code == 200
    body = resp.json()
    assert (body["count"], body["max_model_len"], body["token_strs"]) == (4, 2048, None)
    assert len(body["tokens"]) == 4 and all(isinstance(t, int) for t in body["tokens"])
    assert body == httpx.post(sim.base_url + "/tokenize", json={"prompt": text}).json()
    strs = httpx.post(sim.base_url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert strs["token_strs"] == ["tell", "me", "about", "foxes"]

    auth = {"authorization": "Bearer sim-test-key"}
    usage = httpx.post(sim.url + "/completions", json={"prompt": text}, headers=auth).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]
    counted = httpx.post(sim.base_url + "/tokenize", json={"messages": MESSAGES}).json()["count"]
    usage = httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES}, headers=auth).json()[
        "usage"
    ]
    assert usage["prompt_tokens"] == counted == 6


@pytest.mark.parametrize(
    ("body", "status"),
    [({"model": "gpt-9", "prompt": "hi"}, 404), ({"prompt": 5}, 400), ({"messages": "hi"}, 400)],
)
def test_tokenize_refusals(sim: SimulatorProcess, body: dict[str, Any], status: int) -> None:
    resp = httpx.post(sim.base_url + "/tokenize", json=body)
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == status


def test_tokenize_can_be_left_out(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--no-tokenize")
    resp = httpx.post(sim.base_url + "/tokenize", json={"prompt": "hi"})
    assert (resp.status_code, resp.json()) == (404, {"detail": "Not Found"})
