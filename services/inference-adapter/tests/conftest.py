from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from genai.inference.v1 import inference_pb2_grpc

from genai_adapter.replicas import ReplicaSet
from genai_adapter.scheduler import FairScheduler
from genai_adapter.servicer import InferenceServicer
from genai_adapter.settings import AdapterSettings
from genai_common.grpc_client import create_channel
from genai_common.grpc_server import ServiceInterceptor
from genai_vllmsim.launcher import SimulatorPool, SimulatorProcess

AdapterFactory = Callable[..., Awaitable[inference_pb2_grpc.InferenceServiceStub]]


@pytest.fixture(scope="session")
def simulators() -> Iterator[Callable[..., SimulatorProcess]]:
    """simulators(*flags): a real simulator process with those flags and zeroed counters."""
    pool = SimulatorPool()
    yield pool.get
    pool.close()


@pytest.fixture
def sim(simulators: Callable[..., SimulatorProcess]) -> SimulatorProcess:
    return simulators("--output-tokens", "8")


@dataclass
class RunningAdapter:
    """An in-process adapter: a stub of it, its scheduler (to read the queue from tests) and its replicas."""

    stub: inference_pb2_grpc.InferenceServiceStub
    scheduler: FairScheduler
    replicas: ReplicaSet


@pytest.fixture
async def adapter_server() -> AsyncIterator[Callable[..., Awaitable[RunningAdapter]]]:
    """adapter_server(upstream_url, **settings): an in-process adapter on a free port, wired as main() wires
    it. upstream_url may be None when the settings name the replicas (upstream_urls or upstream_urls_file)."""
    started: list[tuple[grpc.aio.Server, grpc.aio.Channel, ReplicaSet]] = []

    async def start(upstream_url: str | None, **settings: Any) -> RunningAdapter:
        if upstream_url is not None:
            settings["upstream_url"] = upstream_url
        config = AdapterSettings(**settings)
        scheduler = FairScheduler(config.max_concurrent, config.queue_max, config.queue_timeout_s)
        replicas = ReplicaSet(config, on_capacity=scheduler.resize)
        await replicas.start()
        server = grpc.aio.server(interceptors=[ServiceInterceptor()])
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(replicas, scheduler, config.model), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = create_channel(f"127.0.0.1:{port}")
        started.append((server, channel, replicas))
        return RunningAdapter(inference_pb2_grpc.InferenceServiceStub(channel), scheduler, replicas)

    yield start
    for server, channel, replicas in started:
        await channel.close()
        await server.stop(None)
        await replicas.aclose()


@pytest.fixture
def adapter(adapter_server: Callable[..., Awaitable[RunningAdapter]]) -> AdapterFactory:
    """adapter(upstream_url, **settings): a stub of an in-process adapter on a free port."""

    async def start(upstream_url: str | None, **settings: Any) -> inference_pb2_grpc.InferenceServiceStub:
        return (await adapter_server(upstream_url, **settings)).stub

    return start


@pytest.fixture
def dead_upstream_url() -> str:
    """An http URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class CountingProxy:
    """A TCP relay in front of a server that counts the connections made through it: how many
    connections a client opened, seen from outside the client."""

    target: tuple[str, int]
    opened: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{path}"

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.ensure_future(_pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


@pytest.fixture
async def counting_proxy() -> AsyncIterator[Callable[[str], Awaitable[CountingProxy]]]:
    """counting_proxy(url): a relay to that http URL's server; its `url` is the same URL through it."""
    proxies: list[CountingProxy] = []

    async def start(url: str) -> CountingProxy:
        rest = url.removeprefix("http://")
        address, _, path = rest.partition("/")
        host, _, port = address.rpartition(":")
        proxy = CountingProxy((host, int(port)))
        await proxy.start("/" + path if path else "")
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        with contextlib.suppress(Exception):
            await proxy.close()
