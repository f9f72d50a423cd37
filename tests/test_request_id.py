"""One request id end to end: nginx makes or forwards it, every hop logs it, every answer names it."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import grpc
import pytest
from genai.assistant.v1 import assistant_pb2, assistant_pb2_grpc

from tests.harness import RunningStack

# Every process that handles an /ask, and where its JSON log lines are.
HOPS = ("gateway", "auth", "history", "adapter", "upstream")


def _lines(path: Path) -> list[dict[str, object]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def _logged(stack: RunningStack, rid: str, timeout_s: float = 10) -> dict[str, list[dict[str, object]]]:
    """The JSON log lines of each hop (and nginx's access log) that carry `rid`, once every hop has one."""
    files = {hop: stack.log_dir / f"{hop}.log" for hop in HOPS}
    files["nginx"] = stack.cfg.work_dir / "nginx" / "logs" / "access.log"
    deadline = time.monotonic() + timeout_s
    while True:
        found = {
            name: [e for e in _lines(path) if e.get("request_id") == rid] for name, path in files.items()
        }
        if all(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_one_request_id_is_in_every_hops_log(sim_stack: RunningStack) -> None:
    # A new user's token is not in the gateway's credential cache yet: auth is asked, and logs the call.
    user = sim_stack.new_user()
    rid = f"trace-{uuid.uuid4().hex}"
    with sim_stack.client() as client:
        response = client.post(
            "/ask",
            json={"prompt": f"where does {rid} go?"},
            headers={**user.headers, "X-Request-ID": rid},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == rid
    assert response.json()["request_id"] == rid
    found = _logged(sim_stack, rid)
    assert {name: bool(lines) for name, lines in found.items()} == dict.fromkeys([*HOPS, "nginx"], True), (
        found
    )
    access = found["nginx"][0]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/ask", 200)
    assert any(e.get("rpc") == "Authenticate" for e in found["auth"])
    # Stored after the answer, from the gateway's journal, and logged under the request's id.
    assert any(e.get("rpc") == "AppendExchanges" for e in found["history"])
    assert any(e.get("rpc") == "Generate" for e in found["adapter"])
    assert any(e.get("route") == "/ask" for e in found["gateway"])
    # The prompt itself is in nobody's log.
    for lines in found.values():
        assert all("where does" not in json.dumps(e) for e in lines)


def test_nginx_makes_an_id_when_none_comes_and_replaces_a_malformed_one(sim_stack: RunningStack) -> None:
    with sim_stack.client() as client:
        made = client.get("/health")
        odd = client.get("/health", headers={"X-Request-ID": 'bad "id" with spaces'})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
    # One header, not nginx's and the gateway's both.
    assert len(made.headers.get_list("x-request-id")) == 1


def test_error_answers_name_the_request_id(sim_stack: RunningStack) -> None:
    user = sim_stack.new_user()
    with sim_stack.client() as client:
        missing = client.get(
            f"/api/v1/history/{uuid.uuid4()}", headers={**user.headers, "X-Request-ID": "err-1"}
        )
        unauthenticated = client.post("/ask", json={"prompt": "hi"}, headers={"X-Request-ID": "err-2"})
        # nginx's own error (the body is over its limit): the gateway never sees it.
        too_large = client.post("/ask", content=b"x" * (2 * 1024 * 1024), headers={"X-Request-ID": "err-3"})
    for response, rid in ((missing, "err-1"), (unauthenticated, "err-2"), (too_large, "err-3")):
        assert response.status_code >= 400
        assert response.headers["x-request-id"] == rid, response.status_code
        assert response.json()["request_id"] == rid, response.status_code


def test_grpc_failures_name_the_request_id(sim_stack: RunningStack) -> None:
    with open(sim_stack.ca, "rb") as ca:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
    with grpc.secure_channel(f"localhost:{sim_stack.cfg.ports.https}", credentials) as channel:
        stub = assistant_pb2_grpc.AssistantStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Ask(
                assistant_pb2.AskRequest(prompt="hi"), metadata=(("x-request-id", "grpc-err-1"),), timeout=10
            )
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # In the failure's trailers (a failure before any answer is all trailers: nginx's header lands there too).
    assert ("x-request-id", "grpc-err-1") in tuple(failure.value.trailing_metadata())
