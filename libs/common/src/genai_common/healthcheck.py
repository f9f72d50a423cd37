"""Container health probes, for Docker's HEALTHCHECK and compose's `healthcheck:`.

    python -m genai_common.healthcheck grpc 127.0.0.1:50051 [--service NAME] [--mtls-env GENAI_AUTH_]
    python -m genai_common.healthcheck http http://127.0.0.1:8000/health [--bearer-env VAR]

Exit status 0 when the service answers SERVING (gRPC, grpc.health.v1) or with a 2xx (HTTP), 1 otherwise,
with the reason on stderr, which `docker inspect` shows. Auth and history stay SERVING while their database is down
(they still answer what they can, and a restart would not bring it back); `--service postgres` asks for
PostgreSQL as the service sees it, and the gateway's /health answers 200 while degraded, 503 when down. grpc_health_probe would be one more binary to
download into every image; this uses the grpcio the services already carry. The module imports grpc
only for the gRPC probe, so an image without it (the llama.cpp server) runs this file on its own.
`--mtls-env PREFIX` probes an mTLS server with the certificate named by PREFIX's MTLS_CA_FILE,
MTLS_CERT_FILE and MTLS_KEY_FILE (the service's own, in its own container), expecting the server to be
that certificate's identity.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 2.0


def _grpc_channel(target: str, mtls_env: str | None):  # type: ignore[no-untyped-def]
    import grpc

    if not mtls_env:
        return grpc.insecure_channel(target)
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ca, cert, key = (
        open(os.environ[f"{mtls_env}MTLS_{kind}_FILE"], "rb").read() for kind in ("CA", "CERT", "KEY")
    )
    identity = (
        x509.load_pem_x509_certificate(cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", str(identity))]
    )


def check_grpc(
    target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S, mtls_env: str | None = None
) -> str | None:
    """None when `target` reports SERVING for `service` ("" = the whole server), else the reason."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = _grpc_channel(target, mtls_env)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return f"{target}: cannot read the mTLS files named by {mtls_env}MTLS_*_FILE ({type(exc).__name__})"
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_http(url: str, bearer: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when GET `url` answers 2xx, else the reason."""
    if not url.startswith(("http://", "https://")):
        return f"{url}: not an http(s) URL"
    request = urllib.request.Request(url)  # noqa: S310 (scheme checked above)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m genai_common.healthcheck", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default 2)")
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_probe = kinds.add_parser("grpc", help="grpc.health.v1 Check")
    grpc_probe.add_argument("target", help="HOST:PORT")
    grpc_probe.add_argument("--service", default="", help="service name (default: the whole server)")
    grpc_probe.add_argument("--mtls-env", help="settings prefix naming the mTLS files, e.g. GENAI_AUTH_")
    http_probe = kinds.add_parser("http", help="GET, healthy on 2xx")
    http_probe.add_argument("url")
    http_probe.add_argument("--bearer-env", help="environment variable holding a bearer token to send")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "grpc":
        problem = check_grpc(args.target, args.service, args.timeout, args.mtls_env)
    else:
        bearer = os.environ.get(args.bearer_env, "") if args.bearer_env else None
        problem = check_http(args.url, bearer, args.timeout)
    if problem:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
