"""Structured output, tools and cancellation of whole answers, through nginx with the official SDK, against
the vLLM simulator (which answers JSON mode, JSON schemas and tool calls the way vLLM does)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.harness import RunningStack, User

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def sim_user(sim_stack: RunningStack) -> User:
    return sim_stack.new_user()


def sdk(stack: RunningStack, user: User) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.base_url}/v1",
        api_key=user.token,
        http_client=httpx.Client(verify=stack.tls_context()),
        max_retries=0,
    )


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the weather in Kazan? {uuid.uuid4().hex[:8]}"}]


def test_json_mode_returns_a_json_object(sim_stack: RunningStack, sim_user: User) -> None:
    reply = sdk(sim_stack, sim_user).chat.completions.create(
        model="", messages=question(), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    upstream = sim_stack.sim_stats()["last_requests"][-1]
    assert upstream["response_format"] == {"type": "json_object"}


def test_a_json_schema_is_followed(sim_stack: RunningStack, sim_user: User) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["city", "celsius"],
    }
    reply = sdk(sim_stack, sim_user).chat.completions.create(
        model="",
        messages=question(),
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    )
    answer = json.loads(reply.choices[0].message.content or "")
    assert isinstance(answer["city"], str) and isinstance(answer["celsius"], int | float)


def test_tools_return_a_tool_call(sim_stack: RunningStack, sim_user: User) -> None:
    client = sdk(sim_stack, sim_user)
    reply = client.chat.completions.create(model="", messages=question(), tools=[WEATHER_TOOL])  # type: ignore[list-item]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    # The tool's answer goes back in the next request, and the model answers in words.
    follow_up = client.chat.completions.create(
        model="",
        messages=[
            *question(),
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert follow_up.choices[0].message.content
    sent = sim_stack.sim_stats()["last_requests"][-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id and sent[2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": '{"celsius": 21}',
    }


def test_a_streamed_tool_call_arrives_in_pieces_that_make_a_whole(
    sim_stack: RunningStack, sim_user: User
) -> None:
    chunks = list(
        sdk(sim_stack, sim_user).chat.completions.create(
            model="",
            messages=question(),
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    pieces = [c for chunk in chunks if chunk.choices for c in chunk.choices[0].delta.tool_calls or []]
    assert pieces and pieces[0].function and pieces[0].function.name == "get_weather" and pieces[0].id
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert isinstance(json.loads(arguments)["city"], str)
    # vLLM ends a call to a named function with "stop" ("tool_calls" is for auto and required).
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "`other`",
        ),
        ({"logit_bias": {"50256": -100}}, "`logit_bias` is not supported"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        # Beyond 53 bits: refused here, instead of failing on the way to the model.
        ({"seed": 2**70}, "seed"),
    ],
)
def test_what_cannot_be_honoured_is_a_clear_400(
    sim_stack: RunningStack, sim_user: User, fields: dict[str, object], words: str
) -> None:
    with sim_stack.client() as client:
        response = client.post(
            "/v1/chat/completions", headers=sim_user.headers, json={"messages": question(), **fields}
        )
    assert response.status_code in (400, 422), response.text
    assert words in response.json()["error"]["message"]


def test_a_whole_answer_whose_client_leaves_is_cancelled_at_the_model(
    sim_stack: RunningStack, sim_user: User
) -> None:
    before = sim_stack.sim_stats()["cancelled"]
    # The simulator takes about a second per answer; this client waits a fraction of that.
    with sim_stack.client(timeout=0.4) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", headers=sim_user.headers, json={"messages": question()})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sim_stack.sim_stats()["cancelled"] == before:
        time.sleep(0.1)
    assert sim_stack.sim_stats()["cancelled"] == before + 1
