"""The OpenAI-compatible surface: response shapes, errors, auth and latency knobs, over real HTTP."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from genai_vllmsim.launcher import SimulatorProcess

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about foxes"}]


def sse_events(response: httpx.Response) -> list[Any]:
    """The `data:` payloads of an SSE stream, JSON-decoded except the final [DONE]."""
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


def test_health_and_models(sim: SimulatorProcess) -> None:
    assert httpx.get(sim.base_url + "/health").status_code == 200
    body = httpx.get(sim.url + "/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == "sim-model"
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == 4096


def test_chat_not_streamed(sim: SimulatorProcess) -> None:
    resp = httpx.post(sim.url + "/chat/completions", json={"model": "sim-model", "messages": MESSAGES})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-model"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 8
    assert choice["finish_reason"] == "stop"
    # 2 + 4 words in the messages.
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}


def test_completions_not_streamed(sim: SimulatorProcess) -> None:
    resp = httpx.post(sim.url + "/completions", json={"prompt": "once upon a time", "max_tokens": 3})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert len(choice["text"].split()) == 3
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_chat_stream_with_usage(sim: SimulatorProcess) -> None:
    request = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", sim.url + "/chat/completions", json=request) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    role, *content, usage_chunk, _ = events
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(content) == 8
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({c["id"] for c in events[:-1]}) == 1
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}

    streamed = "".join(c["choices"][0]["delta"]["content"] for c in content)
    whole = httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES}).json()
    assert streamed == whole["choices"][0]["message"]["content"]


def test_completions_stream_without_usage(sim: SimulatorProcess) -> None:
    with httpx.stream("POST", sim.url + "/completions", json={"prompt": "hello", "stream": True}) as resp:
        events = sse_events(resp)
    *chunks, done = events
    assert done == "[DONE]"
    assert len(chunks) == 8
    assert all("usage" not in c for c in chunks)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_no_stream_usage_flag(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--no-stream-usage")
    request = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", sim.url + "/chat/completions", json=request) as resp:
        events = sse_events(resp)
    assert all("usage" not in e for e in events[:-1])


def test_output_is_deterministic_per_prompt(sim: SimulatorProcess) -> None:
    def answer(content: str) -> str:
        body = {"messages": [{"role": "user", "content": content}]}
        return httpx.post(sim.url + "/chat/completions", json=body).json()["choices"][0]["message"]["content"]

    assert answer("one prompt") == answer("one prompt")
    assert answer("one prompt") != answer("another prompt")


def test_output_tokens_header_and_stop(sim: SimulatorProcess) -> None:
    url = sim.url + "/chat/completions"
    long = httpx.post(url, json={"messages": MESSAGES}, headers={"x-sim-output-tokens": "30"}).json()
    words = long["choices"][0]["message"]["content"].split()
    assert len(words) == 30
    stop_word = words[5]
    assert stop_word not in words[:5]
    cut = httpx.post(
        url, json={"messages": MESSAGES, "stop": [stop_word]}, headers={"x-sim-output-tokens": "30"}
    )
    assert cut.json()["choices"][0]["message"]["content"].split() == words[:5]
    assert cut.json()["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("kind", "error_type"),
    [("500", "InternalServerError"), ("429", "RateLimitError"), ("400", "BadRequestError")],
)
def test_injected_error_by_header(sim: SimulatorProcess, kind: str, error_type: str) -> None:
    resp = httpx.post(
        sim.url + "/chat/completions", json={"messages": MESSAGES}, headers={"x-sim-error": kind}
    )
    assert resp.status_code == int(kind)
    error = resp.json()["error"]
    assert error["type"] == error_type
    assert error["code"] == int(kind)
    assert error["message"]
    assert "param" in error


def test_legacy_error_shape(sim: SimulatorProcess) -> None:
    headers = {"x-sim-error": "400", "x-sim-error-format": "legacy"}
    resp = httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES}, headers=headers)
    assert resp.status_code == 400
    body = resp.json()
    assert body["object"] == "error"
    assert body["type"] == "BadRequestError"
    assert body["code"] == 400
    assert body["message"]


def test_reset_mid_stream(sim: SimulatorProcess) -> None:
    request = {"messages": MESSAGES, "stream": True}
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", sim.url + "/chat/completions", json=request, headers={"x-sim-error": "reset"}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    received.append(line)
    # The role chunk and two content chunks, then the connection drops (no [DONE]).
    assert len(received) == 3
    assert "data: [DONE]" not in received
    assert sim.stats()["errors"] == 1


def test_reset_not_streamed(sim: SimulatorProcess) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(sim.url + "/completions", json={"prompt": "hi"}, headers={"x-sim-error": "reset"})


def test_error_rate_flag(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--error-rate", "1", "--error-kind", "429", "--error-format", "legacy")
    for _ in range(3):
        resp = httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES})
        assert resp.status_code == 429
        assert resp.json()["object"] == "error"
    # A test can still get a clean answer from a faulty server.
    clean = httpx.post(
        sim.url + "/chat/completions", json={"messages": MESSAGES}, headers={"x-sim-error": "none"}
    )
    assert clean.status_code == 200
    stats = sim.stats()
    assert (stats["started"], stats["errors"], stats["finished"]) == (4, 3, 1)


def test_unknown_model_is_404(sim: SimulatorProcess) -> None:
    resp = httpx.post(sim.url + "/chat/completions", json={"model": "gpt-9", "messages": MESSAGES})
    assert resp.status_code == 404
    assert resp.json()["error"] == {
        "message": "The model `gpt-9` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"messages": []}).encode(),
        json.dumps({"messages": [{"content": "no role"}]}).encode(),
        json.dumps({"messages": MESSAGES, "max_tokens": 0}).encode(),
        json.dumps({"messages": MESSAGES, "stream_options": {"include_usage": True}}).encode(),
        json.dumps({"messages": MESSAGES, "stop": 5}).encode(),
        json.dumps({"messages": MESSAGES, "max_tokens": 5000}).encode(),
    ],
)
def test_invalid_body_is_400(sim: SimulatorProcess, body: bytes) -> None:
    resp = httpx.post(
        sim.url + "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400
    assert sim.stats()["started"] == 0


def test_context_length_message(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--max-model-len", "10")
    resp = httpx.post(sim.url + "/completions", json={"prompt": "a b c d", "max_tokens": 7})
    assert resp.status_code == 400
    assert "maximum context length is 10 tokens" in resp.json()["error"]["message"]
    # Without max_tokens the output is capped to what fits instead.
    ok = httpx.post(
        sim.url + "/completions", json={"prompt": "a b c d"}, headers={"x-sim-output-tokens": "50"}
    )
    assert ok.json()["usage"]["completion_tokens"] == 6
    assert ok.json()["choices"][0]["finish_reason"] == "length"


def test_api_key(simulators: Callable[..., SimulatorProcess]) -> None:
    sim = simulators("--api-key", "sim-test-key")
    body = {"messages": MESSAGES}
    assert httpx.post(sim.url + "/chat/completions", json=body).status_code == 401
    wrong = httpx.get(sim.url + "/models", headers={"authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "Unauthorized"})
    auth = {"authorization": "Bearer sim-test-key"}
    assert httpx.post(sim.url + "/chat/completions", json=body, headers=auth).status_code == 200
    assert httpx.get(sim.url + "/models", headers=auth).status_code == 200
    assert httpx.get(sim.base_url + "/health").status_code == 200


def test_ttft_and_itl_show_in_chunk_gaps(sim: SimulatorProcess) -> None:
    ttft_ms, itl_ms = 400, 40
    headers = {"x-sim-ttft-ms": str(ttft_ms), "x-sim-itl-ms": str(itl_ms), "x-sim-output-tokens": "10"}
    request = {"messages": MESSAGES, "stream": True}
    arrivals: list[float] = []
    with httpx.stream("POST", sim.url + "/chat/completions", json=request, headers=headers) as resp:
        sent = time.perf_counter()
        for line in resp.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 10
    first_gap = arrivals[0] - sent
    token_gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    median_gap = statistics.median(token_gaps)
    # Generous margins: only the relations to the configured values and to each other are checked.
    assert first_gap >= 0.8 * ttft_ms / 1000
    assert median_gap >= 0.6 * itl_ms / 1000
    assert first_gap > 4 * median_gap
