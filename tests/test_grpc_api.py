"""The public gRPC API (genai.assistant.v1.Assistant) through nginx over TLS and HTTP/2, as other services call it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from genai.assistant.v1 import assistant_pb2, assistant_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness import RunningStack, User


@pytest.fixture(scope="module")
def channel(live: RunningStack) -> Iterator[grpc.Channel]:
    with open(live.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    with grpc.secure_channel(f"localhost:{live.cfg.ports.https}", credentials) as secure:
        yield secure


def _auth(user: User) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {user.token}"),)


def test_ask(channel: grpc.Channel, user: User) -> None:
    stub = assistant_pb2_grpc.AssistantStub(channel)
    request = assistant_pb2.AskRequest(prompt=f"Name a Linux command. {uuid.uuid4().hex[:6]}", max_tokens=8)
    reply = stub.Ask(request, metadata=_auth(user), timeout=60)
    assert reply.response and reply.source == "model" and reply.model == "smollm2-135m-instruct"
    assert reply.conversation_id and reply.request_id
    again = stub.Ask(request, metadata=_auth(user), timeout=60)
    assert (again.source, again.response) == ("cache", reply.response)


def test_ask_stream(channel: grpc.Channel, user: User) -> None:
    stub = assistant_pb2_grpc.AssistantStub(channel)
    request = assistant_pb2.AskRequest(prompt=f"Count to three. {uuid.uuid4().hex[:6]}", max_tokens=12)
    chunks = list(stub.AskStream(request, metadata=_auth(user), timeout=60))
    assert len([c for c in chunks if c.text]) > 1
    last = chunks[-1]
    assert last.done and last.source == "model" and last.conversation_id
    assert not any(c.done for c in chunks[:-1])


def test_without_credentials_is_unauthenticated(channel: grpc.Channel) -> None:
    stub = assistant_pb2_grpc.AssistantStub(channel)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Ask(assistant_pb2.AskRequest(prompt="hi"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as failure:
        stub.Ask(
            assistant_pb2.AskRequest(prompt="hi"), metadata=(("authorization", "Bearer forged"),), timeout=10
        )
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_input_is_invalid_argument(channel: grpc.Channel, user: User) -> None:
    stub = assistant_pb2_grpc.AssistantStub(channel)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Ask(assistant_pb2.AskRequest(prompt="   "), metadata=_auth(user), timeout=10)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in (failure.value.details() or "")


def test_failures_carry_the_status_that_says_what_happened(
    channel: grpc.Channel, live: RunningStack, user: User
) -> None:
    stub = assistant_pb2_grpc.AssistantStub(channel)
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Ask(
            assistant_pb2.AskRequest(prompt="hi", model="no-such-model"), metadata=_auth(user), timeout=10
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as missing:
        stub.Ask(
            assistant_pb2.AskRequest(prompt="hi", conversation_id=str(uuid.uuid4())),
            metadata=_auth(user),
            timeout=10,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # Over a limit: RESOURCE_EXHAUSTED with the wait in trailing metadata, not a status that went through HTTP.
    limited_user = live.new_user()
    live.set_limits(limited_user, requests_per_minute=1)
    one = assistant_pb2.AskRequest(prompt=f"One {uuid.uuid4().hex[:6]}", max_tokens=4)
    stub.Ask(one, metadata=_auth(limited_user), timeout=60)
    with pytest.raises(grpc.RpcError) as limited:
        stub.Ask(one, metadata=_auth(limited_user), timeout=60)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(limited.value.trailing_metadata() or ())["retry-after"]) > 0


def test_list_models_health_and_reflection(channel: grpc.Channel, user: User) -> None:
    models = assistant_pb2_grpc.AssistantStub(channel).ListModels(
        assistant_pb2.ListModelsRequest(), metadata=_auth(user), timeout=10
    )
    assert [m.id for m in models.models] == ["smollm2-135m-instruct"]
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="genai.assistant.v1.Assistant"), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = list(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
    )
    names = {s.name for s in answer.list_services_response.service}
    assert "genai.assistant.v1.Assistant" in names
