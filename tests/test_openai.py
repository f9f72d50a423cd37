"""The OpenAI-compatible API through nginx, called the way its users call it: with the official SDK."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

from tests.harness import RunningStack, User

MODEL = "smollm2-135m-instruct"


def sdk(live: RunningStack, credential: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live.base_url}/v1",
        api_key=credential,
        http_client=httpx.Client(verify=live.tls_context()),
        max_retries=0,
    )


def async_sdk(live: RunningStack, credential: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live.base_url}/v1",
        api_key=credential,
        http_client=httpx.AsyncClient(verify=live.tls_context()),
        max_retries=0,
    )


def test_chat_completion_with_a_jwt(live: RunningStack, user: User) -> None:
    client = sdk(live, user.token)
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Name a Linux shell. {uuid.uuid4().hex[:6]}"}],
        max_tokens=12,
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model == MODEL
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_chat_completion_streamed(live: RunningStack, user: User) -> None:
    client = sdk(live, user.token)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Count to five. {uuid.uuid4().hex[:6]}"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].choices == []


async def test_async_sdk_streamed_and_not(live: RunningStack, user: User) -> None:
    client = async_sdk(live, user.token)
    prompt = f"Say hi. {uuid.uuid4().hex[:6]}"
    whole = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8
    )
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8, stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    # The second call is answered from the cache: the same text, streamed.
    assert "".join(pieces) == whole.choices[0].message.content
    await client.close()


def test_completions_endpoint(live: RunningStack, user: User) -> None:
    client = sdk(live, user.token)
    reply = client.completions.create(
        model=MODEL, prompt=f"The capital of France is {uuid.uuid4().hex[:4]}", max_tokens=6
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    streamed = list(
        client.completions.create(
            model=MODEL, prompt=f"Once upon a time {uuid.uuid4().hex[:4]}", max_tokens=6, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)


def test_models_lists_the_served_model(live: RunningStack, user: User) -> None:
    models = sdk(live, user.token).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_unknown_model_is_openai_404(live: RunningStack, user: User) -> None:
    client = sdk(live, user.token)
    with pytest.raises(openai.NotFoundError) as failure:
        client.chat.completions.create(
            model="gpt-17", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert failure.value.status_code == 404
    body = failure.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and "gpt-17" in body["message"]


def test_bad_credentials_are_openai_401(live: RunningStack) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(live, "not-a-token").models.list()


def test_vllm_fields_are_accepted_and_fields_that_cannot_be_honoured_are_refused_by_name(
    live: RunningStack, user: User
) -> None:
    def chat(**fields: object) -> httpx.Response:
        with live.client() as client:
            return client.post(
                "/v1/chat/completions",
                headers=user.headers,
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"Hi {uuid.uuid4().hex[:6]}"}],
                    "max_tokens": 4,
                    **fields,
                },
            )

    accepted = chat(top_k=20, repetition_penalty=1.1, logprobs=False, n=1)
    assert accepted.status_code == 200, accepted.text
    unknown = chat(some_future_field={"x": 1})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "unknown field `some_future_field`"
    unsupported = chat(logprobs=True)
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == {
        "message": "`logprobs` is not supported by this server",
        "type": "invalid_request_error",
        "param": None,
        "code": "unsupported_parameter",
    }


def test_bad_requests_get_openai_errors(live: RunningStack, user: User) -> None:
    with live.client() as client:
        no_user = client.post(
            "/v1/chat/completions",
            headers=user.headers,
            json={"model": MODEL, "messages": [{"role": "system", "content": "x"}]},
        )
        image = client.post(
            "/v1/chat/completions",
            headers=user.headers,
            json={"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        )
        n2 = client.post(
            "/v1/chat/completions",
            headers=user.headers,
            json={"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "x"}]},
        )
    for response in (no_user, image, n2):
        assert 400 <= response.status_code < 500
        assert response.json()["error"]["message"]


def test_api_key_works_with_the_sdk_and_can_be_revoked(live: RunningStack, user: User) -> None:
    with live.client() as client:
        created = client.post("/api/v1/keys", json={"name": "my script"}, headers=user.headers)
        assert created.status_code == 201, created.text
        key = created.json()
        assert key["key"].startswith("gk-")
        listed = client.get("/api/v1/keys", headers=user.headers).json()["keys"]
        # Listed without the secret.
        assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]

    sync_client, async_client = sdk(live, key["key"]), async_sdk(live, key["key"])
    reply = sync_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Hi {uuid.uuid4().hex[:6]}"}], max_tokens=4
    )
    assert reply.choices[0].message.content

    async def streamed() -> str:
        stream = await async_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Yo {uuid.uuid4().hex[:6]}"}],
            max_tokens=4,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    import asyncio

    assert asyncio.run(streamed())

    with live.client() as client:
        assert client.delete(f"/api/v1/keys/{key['id']}", headers=user.headers).json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        sync_client.models.list()


def test_keys_of_others_are_out_of_reach(live: RunningStack, user: User) -> None:
    other = live.new_user()
    with live.client() as client:
        mine = client.post("/api/v1/keys", json={"name": "k"}, headers=user.headers).json()
        assert client.delete(f"/api/v1/keys/{mine['id']}", headers=other.headers).status_code == 404
        assert (
            client.get("/api/v1/keys", params={"owner": user.username}, headers=other.headers).status_code
            == 403
        )
        assert (
            client.post(
                "/api/v1/keys", json={"name": "x", "owner": user.username}, headers=other.headers
            ).status_code
            == 403
        )
