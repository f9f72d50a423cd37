"""POST /ask through nginx: a real model answers, the cache answers the repeat, bad input gets a 4xx."""

from __future__ import annotations

import json
import uuid

from tests.harness import RunningStack, User


def test_ask_is_answered_by_the_model_then_by_the_cache(live: RunningStack, user: User) -> None:
    prompt = f"Name one Linux command for listing files. ({uuid.uuid4().hex[:6]})"
    with live.client() as client:
        first = client.post("/ask", json={"prompt": prompt, "max_tokens": 16}, headers=user.headers)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["source"] == "model"
        assert body["response"].strip()
        assert body["model"] == "smollm2-135m-instruct"
        assert body["usage"]["completion_tokens"] > 0
        again = client.post("/ask", json={"prompt": prompt, "max_tokens": 16}, headers=user.headers)
    assert again.status_code == 200
    assert again.json()["source"] == "cache"
    assert again.json()["response"] == body["response"]


def test_cache_key_covers_generation_parameters(live: RunningStack, user: User) -> None:
    prompt = f"Say hello. ({uuid.uuid4().hex[:6]})"
    with live.client() as client:
        first = client.post("/ask", json={"prompt": prompt, "max_tokens": 4}, headers=user.headers)
        other = client.post("/ask", json={"prompt": prompt, "max_tokens": 6}, headers=user.headers)
    assert first.json()["source"] == "model"
    assert other.json()["source"] == "model"


def test_request_id_is_echoed(live: RunningStack, user: User) -> None:
    with live.client() as client:
        response = client.post(
            "/ask",
            json={"prompt": "Hi", "max_tokens": 2},
            headers={**user.headers, "X-Request-ID": "trace-abc-123"},
        )
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert response.json()["request_id"] == "trace-abc-123"


def test_oversized_prompt_gets_413_with_a_message(live: RunningStack, user: User) -> None:
    with live.client() as client:
        response = client.post("/ask", json={"prompt": "x" * 20_000}, headers=user.headers)
    assert response.status_code == 413
    assert "prompt is too long" in response.json()["detail"]
    assert "16000" in response.json()["detail"]


def test_body_over_the_nginx_limit_gets_json_413(live: RunningStack, user: User) -> None:
    with live.client() as client:
        response = client.post("/ask", json={"prompt": "x" * 1_100_000}, headers=user.headers)
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


def test_bad_max_tokens_and_empty_prompt_get_422(live: RunningStack, user: User) -> None:
    with live.client() as client:
        too_many = client.post("/ask", json={"prompt": "hi", "max_tokens": 100_000}, headers=user.headers)
        zero = client.post("/ask", json={"prompt": "hi", "max_tokens": 0}, headers=user.headers)
        empty = client.post("/ask", json={"prompt": "   "}, headers=user.headers)
        wrong_type = client.post("/ask", json={"prompt": ["a"]}, headers=user.headers)
        not_json = client.post(
            "/ask", content=b"{not json", headers={**user.headers, "Content-Type": "application/json"}
        )
    assert too_many.status_code == 422 and "max_tokens" in too_many.json()["detail"]
    assert zero.status_code == 422
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]
    assert wrong_type.status_code == 422 and "prompt" in wrong_type.json()["detail"]
    assert not_json.status_code == 422


def test_text_that_is_not_unicode_gets_422_not_500(live: RunningStack, user: User) -> None:
    """JSON can carry a lone surrogate ("\\ud800"), which is no Unicode text: refused as bad input wherever it
    comes, never a 500."""
    lone = '"\\ud800 hello"'
    json_headers = {**user.headers, "Content-Type": "application/json"}
    bodies = [
        ("/ask", '{"prompt": ' + lone + "}"),
        ("/ask", '{"prompt": ' + lone + ', "stream": true}'),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": ' + lone + "}]}"),
    ]
    with live.client() as client:
        for path, body in bodies:
            response = client.post(path, content=body.encode(), headers=json_headers)
            assert response.status_code == 422, (path, response.status_code, response.text)
            assert "Unicode" in response.json()["detail"]
        made = client.post("/ask", json={"prompt": "a title to change"}, headers=user.headers)
        conversation = made.json()["conversation_id"]
        renamed = client.patch(
            f"/api/v1/history/{conversation}",
            content=('{"title": ' + lone + "}").encode(),
            headers=json_headers,
        )
    assert renamed.status_code == 422, renamed.text


def test_a_streamed_answer_reports_and_is_charged_the_tokens_it_spent(live: RunningStack, user: User) -> None:
    # llama.cpp's server sends no usage in a stream (it ignores stream_options): the adapter counts the
    # tokens with the server's tokenizer, so quotas and usage reports see streamed answers too.
    prompt = f"Name two Linux commands for files. ({uuid.uuid4().hex[:6]})"
    done = None
    with live.client() as client:
        with client.stream(
            "POST", "/ask", json={"prompt": prompt, "max_tokens": 12, "stream": True}, headers=user.headers
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                event = json.loads(line[len("data: ") :]) if line.startswith("data: {") else {}
                if event.get("type") == "done":
                    done = event
        assert done is not None and done["source"] == "model", done
        usage = done["usage"]
        assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12, usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        # The same figures are in the user's history, which usage reports are made from.
        stored = client.get(f"/api/v1/history/{done['conversation_id']}", headers=user.headers)
    assert stored.status_code == 200, stored.text
    assert stored.json()["messages"][-1]["usage"] == usage
