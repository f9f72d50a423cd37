"""Trust inside the stack: every internal gRPC port refuses plaintext, TLS without a client certificate, a
certificate of another CA, and a valid certificate of a service that may not call it; the gateway still
works, and it accepts only the server it meant to reach."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from genai.auth.v1 import auth_pb2, auth_pb2_grpc
from genai.history.v1 import history_pb2, history_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genai_common import mtls
from tests.harness import RunningStack

TIMEOUT_S = 10


def _files(stack: RunningStack, identity: str) -> mtls.MtlsFiles:
    return mtls.files_in(stack.cfg.work_dir / "mtls", identity)


def _port(stack: RunningStack, identity: str) -> int:
    return int(getattr(stack.cfg.ports, identity))


def _tls(files: mtls.MtlsFiles | None, ca: Path, server_identity: str) -> grpc.ChannelCredentials:
    """TLS trusting the stack's CA, presenting `files`' certificate (or none)."""
    if files is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return mtls.channel_credentials(mtls.MtlsFiles(ca=ca, cert=files.cert, key=files.key))


def _channel(
    stack: RunningStack, target: str, files: mtls.MtlsFiles | None, server_identity: str
) -> grpc.Channel:
    credentials = _tls(files, _files(stack, "gateway").ca, server_identity)
    return grpc.secure_channel(
        f"127.0.0.1:{_port(stack, target)}",
        credentials,
        options=[("grpc.ssl_target_name_override", server_identity)],
    )


def _call(channel: grpc.Channel, target: str) -> grpc.StatusCode:
    """One ordinary call of `target`'s own service on `channel`: OK, or the status it was refused with."""
    return _answer(channel, target)[0]


def _answer(channel: grpc.Channel, target: str) -> tuple[grpc.StatusCode, str]:
    try:
        if target == "auth":
            auth_pb2_grpc.AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(token="not-a-token"), timeout=TIMEOUT_S
            )
        elif target == "history":
            history_pb2_grpc.HistoryServiceStub(channel).ListConversations(
                history_pb2.ListConversationsRequest(owner_id="00000000-0000-0000-0000-000000000000"),
                timeout=TIMEOUT_S,
            )
        else:
            inference_pb2_grpc.InferenceServiceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), timeout=TIMEOUT_S
            )
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# A caller that may not call each internal service: every one of them answers the gateway alone.
WRONG_CALLER = {"auth": "history", "history": "adapter", "adapter": "auth"}
REFUSED_HANDSHAKE = (grpc.StatusCode.UNAVAILABLE,)


@pytest.mark.parametrize("target", ["auth", "history", "adapter"])
def test_internal_port_refuses_plaintext(sim_stack: RunningStack, target: str) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{_port(sim_stack, target)}") as channel:
        assert _call(channel, target) in REFUSED_HANDSHAKE


@pytest.mark.parametrize("target", ["auth", "history", "adapter"])
def test_internal_port_refuses_tls_without_a_client_certificate(sim_stack: RunningStack, target: str) -> None:
    with _channel(sim_stack, target, None, target) as channel:
        assert _call(channel, target) in REFUSED_HANDSHAKE


@pytest.mark.parametrize("target", ["auth", "history", "adapter"])
def test_internal_port_refuses_a_certificate_of_another_ca(
    sim_stack: RunningStack, target: str, tmp_path: Path
) -> None:
    # Named "gateway", like the one caller allowed, but issued by a CA the stack does not trust.
    forged = mtls.issue(tmp_path / "other-ca", "gateway")
    with _channel(sim_stack, target, forged, target) as channel:
        assert _call(channel, target) in REFUSED_HANDSHAKE


@pytest.mark.parametrize("target", ["auth", "history", "adapter"])
def test_internal_port_refuses_a_valid_certificate_of_the_wrong_service(
    sim_stack: RunningStack, target: str
) -> None:
    caller = _files(sim_stack, WRONG_CALLER[target])
    with _channel(sim_stack, target, caller, target) as channel:
        assert _call(channel, target) == grpc.StatusCode.PERMISSION_DENIED
        # Its own health probe is the one thing any certificate of the stack may ask.
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("target", ["auth", "history", "adapter"])
def test_the_gateways_certificate_is_let_in(sim_stack: RunningStack, target: str) -> None:
    with _channel(sim_stack, target, _files(sim_stack, "gateway"), target) as channel:
        # Reaches the service's own logic: an answer, or that logic's refusal of a made-up request (auth:
        # "not-a-token" is not a valid token), never the transport's or the caller check's refusal.
        code, details = _answer(channel, target)
        assert code != grpc.StatusCode.UNAVAILABLE
        assert "certificate" not in details and "may not call" not in details, details


def test_the_adapters_certificate_cannot_export_anyones_dialogs(sim_stack: RunningStack) -> None:
    """A compromised model-server neighbour holding the adapter's certificate gets no dialogs out of history."""
    user = sim_stack.new_user()
    with sim_stack.client() as client:
        asked = client.post(
            "/ask", json={"prompt": "a secret of the company", "max_tokens": 8}, headers=user.headers
        )
    assert asked.status_code == 200, asked.text
    with _channel(sim_stack, "history", _files(sim_stack, "adapter"), "history") as channel:
        stub = history_pb2_grpc.HistoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            for _chunk in stub.AdminExportConversations(
                history_pb2.AdminExportConversationsRequest(
                    actor=history_pb2.Actor(user_id=str(user.id), username="admin"), owner_id=str(user.id)
                ),
                timeout=TIMEOUT_S,
            ):
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "adapter" in (refused.value.details() or "")


def test_a_client_accepts_only_the_server_it_meant(sim_stack: RunningStack) -> None:
    """Dialling auth's port while expecting history (an address taken over by another service) fails."""
    with _channel(sim_stack, "auth", _files(sim_stack, "gateway"), "history") as channel:
        assert _call(channel, "auth") in REFUSED_HANDSHAKE


def test_internal_certificates_expiry_is_a_metric(sim_stack: RunningStack) -> None:
    for service in ("auth", "history", "adapter", "gateway"):
        found = sim_stack.metrics(service)
        expiry = found.get(("genai_tls_certificate_expiry_timestamp_seconds", (("certificate", "internal"),)))
        assert expiry is not None and expiry > 0, service


# The pieces on their own: the policy, the settings, issuing and renewing.


def test_policy_lets_each_identity_call_only_what_it_is_allowed() -> None:
    policy = mtls.CallerPolicy(
        {"genai.history.v1.HistoryService": {"gateway"}, "/genai.history.v1.HistoryService/Ping": {"adapter"}}
    )
    assert policy.allows("/genai.history.v1.HistoryService/ListConversations", "gateway")
    assert not policy.allows("/genai.history.v1.HistoryService/ListConversations", "adapter")
    # A method's own entry overrides its service's.
    assert policy.allows("/genai.history.v1.HistoryService/Ping", "adapter")
    assert not policy.allows("/genai.history.v1.HistoryService/Ping", "gateway")
    # Health is open to every identity of the CA; anything not listed is closed to all.
    assert policy.allows("/grpc.health.v1.Health/Check", "adapter")
    assert not policy.allows("/genai.auth.v1.AuthService/Authenticate", "gateway")


class _Settings:
    model_config = {"env_prefix": "GENAI_HISTORY_"}

    def __init__(self, env: str, **files: str) -> None:
        self.env = env
        self.mtls_ca_file = files.get("ca", "")
        self.mtls_cert_file = files.get("cert", "")
        self.mtls_key_file = files.get("key", "")


def test_settings_require_mtls_outside_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="GENAI_HISTORY_MTLS_CA_FILE"):
        mtls.files_from_settings(_Settings("prod"))
    assert mtls.files_from_settings(_Settings("dev")) is None  # a service run by hand, in plaintext
    issued = mtls.issue(tmp_path, "history")
    with pytest.raises(SystemExit, match="GENAI_HISTORY_MTLS_KEY_FILE"):
        mtls.files_from_settings(_Settings("dev", ca=str(issued.ca), cert=str(issued.cert)))
    with pytest.raises(SystemExit, match="cannot read"):
        mtls.files_from_settings(
            _Settings("prod", ca=str(issued.ca), cert=str(issued.cert), key="/nonexistent")
        )
    files = mtls.files_from_settings(
        _Settings("prod", ca=str(issued.ca), cert=str(issued.cert), key=str(issued.key))
    )
    assert files == issued


def test_issue_keeps_valid_certificates_and_renews_expiring_ones(tmp_path: Path) -> None:
    first = mtls.ensure_all(tmp_path)
    assert set(first) == set(mtls.IDENTITIES)
    assert oct(first["auth"].key.stat().st_mode & 0o777) == "0o600"
    certs = {identity: files.cert.read_bytes() for identity, files in first.items()}
    ca = first["auth"].ca.read_bytes()
    mtls.ensure_all(tmp_path)
    assert {identity: files.cert.read_bytes() for identity, files in first.items()} == certs
    # Within the renewal window (every 365-day certificate expires within 400 days): reissued, same CA.
    mtls.ensure_all(tmp_path, renew_within_days=400, days=800)
    assert all(files.cert.read_bytes() != certs[identity] for identity, files in first.items())
    assert first["auth"].ca.read_bytes() == ca


def test_per_service_layout_holds_only_that_services_key(tmp_path: Path) -> None:
    assert mtls.main(["issue", str(tmp_path / "pki"), "--per-service"]) == 0
    for identity in mtls.IDENTITIES:
        folder = tmp_path / "pki" / identity
        assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
        assert (folder / "key.pem").read_bytes() == (tmp_path / "pki" / f"{identity}.key").read_bytes()
