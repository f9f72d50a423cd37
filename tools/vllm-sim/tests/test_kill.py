"""The kill switch: a replica that dies now or mid-stream, as the router's failover tests need it."""

from __future__ import annotations

import json

import httpx
import pytest

from genai_vllmsim.app import KILLED_EXIT_CODE
from genai_vllmsim.launcher import SimulatorProcess, running_simulator

MESSAGES = [{"role": "user", "content": "stream until I die"}]
STREAM = {"messages": MESSAGES, "stream": True}


def read_stream(sim: SimulatorProcess, received: list[str], headers: dict[str, str] | None = None) -> None:
    """Read a chat stream into `received` (content chunks and [DONE]) until it ends or breaks."""
    with httpx.stream(
        "POST", sim.url + "/chat/completions", json=STREAM, headers=headers, timeout=30
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == "data: [DONE]":
                received.append("[DONE]")
            elif line.startswith("data: "):
                delta = json.loads(line[len("data: ") :])["choices"][0]["delta"]
                if "role" not in delta:
                    received.append(delta["content"])


def test_killed_after_n_tokens_cuts_the_stream_and_restarts_on_its_port() -> None:
    with running_simulator("--itl-ms", "5", "--output-tokens", "20") as sim:
        port = sim.port
        sim.kill(after_tokens=3)
        assert httpx.get(sim.base_url + "/health").status_code == 200  # armed, still alive
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            read_stream(sim, received)
        assert len(received) == 3
        assert sim.proc.wait(timeout=5) == KILLED_EXIT_CODE
        with pytest.raises(httpx.ConnectError):
            httpx.get(sim.base_url + "/health")

        sim.restart()
        assert sim.port == port
        again: list[str] = []
        read_stream(sim, again)
        # The new process starts disarmed, with zeroed counters.
        assert (len(again), again[-1]) == (21, "[DONE]")
        assert sim.stats()["finished"] == 1


def test_killed_now_while_a_stream_is_open() -> None:
    with running_simulator("--itl-ms", "50", "--output-tokens", "200") as sim:
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", sim.url + "/chat/completions", json=STREAM, timeout=30) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        received.append(line)
                        if len(received) == 3:
                            sim.kill()  # returns once the process has exited
        assert 3 <= len(received) < 200
        assert "data: [DONE]" not in received
        assert sim.proc.returncode == KILLED_EXIT_CODE


def test_killed_before_the_first_token_and_by_flag() -> None:
    # Armed by flag: answers shorter than 5 tokens go through, the first one that reaches 5 kills.
    with running_simulator("--die-after-tokens", "5", "--output-tokens", "3") as sim:
        assert httpx.post(sim.url + "/chat/completions", json={"messages": MESSAGES}).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(
                sim.url + "/chat/completions",
                json={"messages": MESSAGES},
                headers={"x-sim-output-tokens": "10"},
            )
        assert sim.proc.wait(timeout=5) == KILLED_EXIT_CODE

        # after_tokens=0: dies when the next request is scheduled; a stream has its 200, then nothing.
        sim.restart()
        sim.kill(after_tokens=0)
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            read_stream(sim, received)
        assert received == []
        assert sim.proc.wait(timeout=5) == KILLED_EXIT_CODE


def test_kill_switch_refuses_a_bad_count_and_reset_disarms_it(sim: SimulatorProcess) -> None:
    resp = httpx.post(sim.base_url + "/sim/kill", params={"after_tokens": "-1"})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "after_tokens"
    sim.kill(after_tokens=2)
    sim.reset()
    request = {"messages": MESSAGES, "stream": True}
    with httpx.stream("POST", sim.url + "/chat/completions", json=request) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
