"""Several model server replicas behind one adapter: spreading, affinity, failover, health, models, reloads.

In-process adapter (wired as main() wires it), real simulator processes (tools/vllm-sim) as replicas; a
dead one is a port where nothing listens, or a simulator ended by its kill switch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pydantic
import pytest
from genai.inference.v1 import inference_pb2
from prometheus_client import REGISTRY

from genai_adapter.replicas import ReplicaSet
from genai_adapter.ring import HashRing
from genai_adapter.settings import AdapterSettings
from genai_adapter.upstream import ReplicaLoad, read_load
from genai_vllmsim.launcher import SimulatorProcess, running_simulator

# The `adapter_server` fixture: adapter_server(upstream_url or None, **settings) -> RunningAdapter.
AdapterServer = Callable[..., Awaitable[Any]]
Simulators = Callable[..., SimulatorProcess]

MESSAGES = [inference_pb2.ChatMessage(role="user", content="tell me about foxes")]


def ask(key: str = "", **fields: Any) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(messages=MESSAGES, affinity_key=key, **fields)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def replicas_of(*sims: SimulatorProcess) -> str:
    return ",".join(sim.url for sim in sims)


def key_owned_by(urls: list[str], owner: str) -> str:
    """An affinity key whose own replica on the ring is `owner`."""
    ring = HashRing(urls)
    return next(f"conversation-{i}" for i in range(10_000) if next(ring.walk(f"conversation-{i}")) == owner)


async def finished(sim: SimulatorProcess) -> int:
    return int((await asyncio.to_thread(sim.stats))["finished"])


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def texts(call: Any) -> list[str]:
    return [chunk.text async for chunk in call if chunk.text]


# --- settings and parsing -----------------------------------------------------------------------------


def test_urls_are_checked_and_deduplicated(tmp_path: Path) -> None:
    settings = AdapterSettings(upstream_urls="http://a:8000/v1, http://b:8000/v1/,http://a:8000/v1")
    assert settings.replica_urls() == ["http://a:8000/v1", "http://b:8000/v1"]
    # Without the list, the single URL as before.
    assert AdapterSettings(upstream_url="http://one:8000/v1").replica_urls() == ["http://one:8000/v1"]
    with pytest.raises(pydantic.ValidationError, match="'ftp://b' is not an http:// or https:// URL"):
        AdapterSettings(upstream_urls="http://a:8000/v1,ftp://b")
    listed = tmp_path / "replicas"
    listed.write_text(
        "# one vLLM per GPU\nhttp://gpu0:8000/v1\nhttp://gpu1:8000/v1, http://gpu2:8000/v1 # new\n"
    )
    assert AdapterSettings(upstream_urls_file=str(listed)).upstream_urls_file == listed
    assert AdapterSettings(upstream_urls_file="").upstream_urls_file is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read .*No such file"),
        ("# nothing yet\n", "lists no model server URL"),
        ("gpu0:8000", "not an http"),
    ],
)
def test_a_bad_url_file_stops_the_start_with_a_clear_message(
    tmp_path: Path, content: str | None, message: str
) -> None:
    listed = tmp_path / "replicas"
    if content is not None:
        listed.write_text(content)
    with pytest.raises(pydantic.ValidationError, match=message):
        AdapterSettings(upstream_urls_file=str(listed))


def test_load_is_read_from_vllms_metrics_page() -> None:
    page = """# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4.0
"""
    assert read_load(page) == ReplicaLoad(waiting=5.0, kv_cache_usage=0.5)
    # vLLM v0's name of the KV-cache gauge.
    assert read_load('vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n') == ReplicaLoad(0.0, 0.75)
    # llama.cpp's server, or no metrics page at all: no load known.
    assert read_load("# nothing of vLLM's\nprocess_cpu_seconds_total 1.0\n") is None
    assert read_load("vllm:num_requests_waiting{broken\n") is None


# --- routing ------------------------------------------------------------------------------------------


async def test_generations_spread_over_the_replicas_and_the_queue_admits_per_replica(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    sims = [simulators("--itl-ms", "20", "--output-tokens", "10", "--seed", str(n)) for n in range(3)]
    served = await adapter_server(None, upstream_urls=replicas_of(*sims), model="sim-model", max_concurrent=4)
    assert [r.name for r in served.replicas.replicas] == [sim.url for sim in sims]
    assert served.scheduler.max_concurrent == 12
    calls = [served.stub.Generate(ask(), timeout=30) for _ in range(15)]
    calls += [texts(served.stub.GenerateStream(ask(), timeout=30)) for _ in range(15)]
    await asyncio.gather(*calls)
    counts = [await finished(sim) for sim in sims]
    assert sum(counts) == 30
    # Least loaded first: with 30 at once and 4 slots each, every replica carries its part.
    assert min(counts) >= 6, counts
    for sim in sims:
        assert value("genai_adapter_replica_up", upstream=sim.url) == 1
        assert value("genai_adapter_replica_requests_total", upstream=sim.url) >= 6
    await until(
        lambda: all(value("genai_adapter_replica_in_flight", upstream=sim.url) == 0 for sim in sims),
        "every generation counted out",
    )


async def test_round_robin_gives_each_replica_its_turn(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    sims = [simulators("--seed", str(n)) for n in range(3)]
    served = await adapter_server(
        None, upstream_urls=replicas_of(*sims), model="sim-model", routing="round_robin"
    )
    for _ in range(9):
        await served.stub.Generate(ask(), timeout=30)
    # One at a time, so load never differs: only the turns decide.
    assert [await finished(sim) for sim in sims] == [3, 3, 3]


async def test_a_conversation_stays_on_its_replica(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    sims = [simulators("--output-tokens", "4", "--seed", str(n)) for n in range(3)]
    urls = [sim.url for sim in sims]
    served = await adapter_server(None, upstream_urls=",".join(urls), model="sim-model")
    kept = value("genai_adapter_affinity_total", result="kept")
    key = key_owned_by(urls, urls[1])
    for _ in range(6):
        await served.stub.Generate(ask(key), timeout=10)
    assert [await finished(sim) for sim in sims] == [0, 6, 0]
    assert value("genai_adapter_affinity_total", result="kept") == kept + 6
    # Other conversations go to their own replicas: every replica owns some.
    for sim in sims:
        sim.reset()
    for n in range(30):
        await served.stub.Generate(ask(f"other-{n}"), timeout=10)
    assert all([await finished(sim) for sim in sims])


async def test_replicas_may_serve_different_models(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    small, large = simulators("--model", "small", "--output-tokens", "3"), simulators("--model", "large")
    served = await adapter_server(None, upstream_urls=replicas_of(small, large))
    listed = await served.stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10)
    assert [m.id for m in listed.models] == ["small", "large"]
    for _ in range(4):
        await served.stub.Generate(ask(model="large"), timeout=10)
    assert (await finished(small), await finished(large)) == (0, 4)
    # No default model configured: the first one listed, on a replica that serves it.
    answer = await served.stub.Generate(ask(), timeout=10)
    assert answer.model == "small" and await finished(small) == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.Generate(ask(model="nobody-serves-this"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_healthy_replica_is_not_passed_over_for_one_out_of_rotation(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    first_sim, second_sim = simulators("--output-tokens", "3"), simulators("--output-tokens", "4")
    served = await adapter_server(
        None, upstream_urls=replicas_of(first_sim, second_sim), model="sim-model", health_interval_s=0.1
    )
    first, second = served.replicas.replicas
    # A misspelt model is refused by whichever replica it went to, which still serves what it listed.
    for _ in range(4):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await served.stub.Generate(ask(model="sim-modle"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert [first.models, second.models] == [{"sim-model"}, {"sim-model"}]
    # A replica whose list is not known (it came back and could not be asked yet) still serves while the one
    # that lists the model is out of rotation.
    first.models = None
    second_sim.close()
    await until(lambda: not second.up, "the stopped replica out of rotation")
    for _ in range(3):
        assert (await served.stub.Generate(ask(), timeout=10)).text
    assert await finished(first_sim) == 3


# --- failures -----------------------------------------------------------------------------------------


async def test_a_replica_that_fails_its_health_checks_leaves_the_rotation_and_the_queue_shrinks(
    adapter_server: AdapterServer, dead_upstream_url: str, simulators: Simulators
) -> None:
    sim = simulators("--output-tokens", "4")
    served = await adapter_server(
        None,
        upstream_urls=replicas_of(sim) + "," + dead_upstream_url,
        model="sim-model",
        max_concurrent=3,
        health_interval_s=0.1,
    )
    dead = served.replicas.replicas[1]
    await until(lambda: not dead.up, "the dead replica out of rotation")
    assert served.scheduler.max_concurrent == 3
    assert value("genai_adapter_replica_up", upstream=dead_upstream_url) == 0
    assert value("genai_adapter_upstream_up") == 1
    for _ in range(5):
        await served.stub.Generate(ask(), timeout=10)
    assert await finished(sim) == 5


async def test_a_replica_killed_before_the_first_token_is_replaced_and_after_it_the_stream_fails(
    adapter_server: AdapterServer,
) -> None:
    with (
        running_simulator("--itl-ms", "10", "--output-tokens", "6") as doomed,
        running_simulator("--itl-ms", "10", "--output-tokens", "6") as spare,
    ):
        urls = [doomed.url, spare.url]
        served = await adapter_server(
            None, upstream_urls=",".join(urls), model="sim-model", health_interval_s=30
        )
        key = key_owned_by(urls, doomed.url)
        # Dies once the request is scheduled: the stream had its 200 but no token, so it moves.
        doomed.kill(after_tokens=0)
        assert len(await texts(served.stub.GenerateStream(ask(key), timeout=10))) == 6
        assert doomed.proc.wait(timeout=5) != 0
        assert await finished(spare) == 1

        # Dies after its third token: the text already went out, so the stream ends with an error.
        doomed.restart()
        doomed.kill(after_tokens=3)
        received: list[str] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for chunk in served.stub.GenerateStream(ask(key), timeout=10):
                received.append(chunk.text)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len([t for t in received if t]) == 3
        assert await finished(spare) == 1  # not repeated elsewhere


async def test_server_errors_fail_over_until_the_breaker_opens_and_refusals_are_not_repeated(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    # Answers its health checks and lists its model, but every generation fails with a 500.
    broken = simulators("--error-rate", "1", "--error-kind", "500")
    good = simulators("--output-tokens", "4", "--seed", "7")
    urls = [broken.url, good.url]
    served = await adapter_server(
        None, upstream_urls=",".join(urls), model="sim-model", health_interval_s=30, breaker_failures=2
    )
    key = key_owned_by(urls, broken.url)
    failovers = value("genai_adapter_replica_failovers_total", upstream=broken.url)
    answers = [await served.stub.Generate(ask(key), timeout=10) for _ in range(3)]
    answers += [await texts(served.stub.GenerateStream(ask(key), timeout=10)) for _ in range(2)]
    assert all(answers)
    assert await finished(good) == 5
    # Tried twice (each time moved to the good one), then skipped while its breaker is open.
    assert (await asyncio.to_thread(broken.stats))["errors"] == 2
    assert value("genai_adapter_replica_failovers_total", upstream=broken.url) == failovers + 2
    assert value("genai_adapter_replica_breaker_state", upstream=broken.url) == 2
    assert served.replicas.replicas[0].up  # its health checks still pass: the breaker keeps it out

    # A request the server refuses as invalid would be refused anywhere: asked once.
    refusing = [simulators("--error-rate", "1", "--error-kind", "400", "--seed", str(n)) for n in range(2)]
    served = await adapter_server(None, upstream_urls=replicas_of(*refusing), model="sim-model")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await served.stub.Generate(ask(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = [(await asyncio.to_thread(sim.stats))["errors"] for sim in refusing]
    assert sorted(errors) == [0, 1]


# --- the list changes ---------------------------------------------------------------------------------


async def test_the_list_is_read_again_without_a_restart(
    adapter_server: AdapterServer, simulators: Simulators, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = (
        simulators("--output-tokens", "2", "--seed", "1"),
        simulators("--output-tokens", "2", "--seed", "2"),
    )
    listed = tmp_path / "replicas"
    listed.write_text(first.url + "\n")
    served = await adapter_server(
        None, upstream_urls_file=str(listed), model="sim-model", max_concurrent=2, upstream_refresh_s=30
    )
    replicas: ReplicaSet = served.replicas
    assert [r.name for r in replicas.replicas] == [first.url]
    listed.write_text(f"{first.url}\n{second.url}\n")
    replicas.reload()  # as SIGHUP does
    await until(lambda: len(replicas.replicas) == 2, "the second replica joins")
    assert served.scheduler.max_concurrent == 4
    for n in range(10):
        await served.stub.Generate(ask(f"c{n}"), timeout=10)
    assert await finished(second) > 0

    # A list that cannot be used keeps the one known.
    listed.write_text("# emptied by mistake\n")
    with caplog.at_level(logging.ERROR, "genai_adapter.replicas"):
        await replicas.refresh()
    assert f"{listed} lists no model server URL" in caplog.text
    assert len(replicas.replicas) == 2

    # A replica that leaves takes its metrics with it and no longer gets requests.
    listed.write_text(second.url + "\n")
    await replicas.refresh()
    assert [r.name for r in replicas.replicas] == [second.url]
    assert REGISTRY.get_sample_value("genai_adapter_replica_up", {"upstream": first.url}) is None
    assert served.scheduler.max_concurrent == 2
    first.reset()
    for n in range(5):
        await served.stub.Generate(ask(f"c{n}"), timeout=10)
    assert await finished(first) == 0


async def test_a_name_stands_for_each_of_its_addresses(
    adapter_server: AdapterServer, simulators: Simulators
) -> None:
    sim = simulators("--output-tokens", "3")
    by_name = f"http://localhost:{sim.port}/v1"
    served = await adapter_server(None, upstream_urls=by_name, model="sim-model", upstream_resolve=True)
    names = [r.name for r in served.replicas.replicas]
    assert sim.url in names  # http://127.0.0.1:PORT/v1, answering to the name localhost
    assert all(r.endpoint.host == f"localhost:{sim.port}" for r in served.replicas.replicas)
    # Any other address of the name (::1) has no simulator behind it and is taken out; requests still work.
    for _ in range(3):
        await served.stub.Generate(ask(), timeout=10)
    assert await finished(sim) == 3
