"""Channels to several replicas (genai_common.grpc_client): targets, round robin over real servers on mutual
TLS, retries of the idempotent methods when a replica dies, and none after a server's "no retry"."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genai_common import mtls
from genai_common.grpc_client import IDEMPOTENT_METHODS, channel_target, create_channel, service_config
from genai_common.grpc_server import NO_RETRY


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("history:50052", "dns:///history:50052"),
        ("127.0.0.1:50052", "dns:///127.0.0.1:50052"),
        ("dns:///history:50052", "dns:///history:50052"),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", "ipv4:10.0.0.1:1,10.0.0.2:1"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_targets(target: str, expected: str) -> None:
    assert channel_target(target) == expected


@pytest.mark.parametrize("target", ["history-1:1,history-2:1", "127.0.0.1:1,[::1]:2", "127.0.0.1,127.0.0.2"])
def test_a_list_of_names_or_mixed_families_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="one DNS name"):
        channel_target(target)


def test_service_config_balances_and_retries_only_what_is_named() -> None:
    config = json.loads(service_config(["a.B/C", "a.D"]))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [{"service": "a.B", "method": "C"}, {"service": "a.D"}]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "methodConfig" not in json.loads(service_config([]))
    # Never a call whose repeat would do the work twice.
    for unsafe in ("AuthService/Refresh", "AuthService/CreateApiKey", "DeleteConversation", "/Generate"):
        assert not any(name.endswith(unsafe) for name in IDEMPOTENT_METHODS)


class Replica(health_pb2_grpc.HealthServicer):
    """A health service that counts its calls; "slow" waits, "down" answers UNAVAILABLE with NO_RETRY."""

    def __init__(self) -> None:
        self.calls = 0

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        self.calls += 1
        if request.service == "slow":
            await asyncio.sleep(0.5)
        if request.service == "down":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "database down", trailing_metadata=(NO_RETRY,))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, mtls.MtlsFiles]:
    return mtls.ensure_all(tmp_path_factory.mktemp("mtls"))


async def _replica(files: mtls.MtlsFiles) -> tuple[grpc.aio.Server, Replica, int]:
    server = grpc.aio.server()
    servicer = Replica()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", mtls.server_credentials(files))
    await server.start()
    return server, servicer, port


async def _check(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return int(reply.status)


async def test_calls_spread_over_every_replica_and_survive_one_dying(
    pki: dict[str, mtls.MtlsFiles], tmp_path: Path
) -> None:
    (a, first, port_a), (b, second, port_b) = [await _replica(pki["history"]) for _ in range(2)]
    # Both replicas' certificates say "history", whatever address each was reached at.
    channel = create_channel(
        f"127.0.0.1:{port_a},127.0.0.1:{port_b}", mtls=pki["gateway"], server_identity="history"
    )
    try:
        await channel.channel_ready()
        # Round robin reaches both once both are connected; pick_first (gRPC's default) would use one.
        await asyncio.wait_for(_until_both_answer(channel, first, second), 10)
        before = Counter(first=first.calls, second=second.calls)
        await asyncio.gather(*(_check(channel) for _ in range(40)))
        spread = Counter(first=first.calls, second=second.calls) - before
        assert spread["first"] >= 10 and spread["second"] >= 10, spread

        # Calls in flight on the replica that goes away are answered by the other one.
        in_flight = [asyncio.ensure_future(_check(channel, "slow")) for _ in range(20)]
        await asyncio.sleep(0.2)
        await a.stop(0)
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(result == health_pb2.HealthCheckResponse.SERVING for result in results), results
        assert all(await asyncio.gather(*(_check(channel) for _ in range(20))))
    finally:
        await channel.close()
        await a.stop(0)
        await b.stop(0)


async def _until_both_answer(channel: grpc.aio.Channel, first: Replica, second: Replica) -> None:
    while not (first.calls and second.calls):
        await _check(channel)


async def test_a_failure_the_server_says_not_to_retry_is_tried_once(pki: dict[str, mtls.MtlsFiles]) -> None:
    (a, first, port_a), (b, second, port_b) = [await _replica(pki["history"]) for _ in range(2)]
    channel = create_channel(
        f"127.0.0.1:{port_a},127.0.0.1:{port_b}", mtls=pki["gateway"], server_identity="history"
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _check(channel, "down")
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert first.calls + second.calls == 1
    finally:
        await channel.close()
        await a.stop(0)
        await b.stop(0)


async def test_a_server_of_another_identity_is_refused(pki: dict[str, mtls.MtlsFiles]) -> None:
    server, servicer, port = await _replica(pki["auth"])
    channel = create_channel(
        f"127.0.0.1:{port},127.0.0.1:{port}", mtls=pki["gateway"], server_identity="history"
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.calls == 0
    finally:
        await channel.close()
        await server.stop(0)
