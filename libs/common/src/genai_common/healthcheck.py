"""Container health probes, for Docker's HEALTHCHECK and compose's `healthcheck:`.

    python -m genai_common.healthcheck grpc 127.0.0.1:50051 [--service NAME]
    python -m genai_common.healthcheck http http://127.0.0.1:8000/health [--bearer-env VAR]

Exit status 0 when the service answers SERVING (gRPC, grpc.health.v1) or with a 2xx (HTTP), 1 otherwise,
with the reason on stderr, which `docker inspect` shows. Auth and history stay SERVING while their database is down
(they still answer what they can, and a restart would not bring it back); `--service postgres` asks for
PostgreSQL as the service sees it, and the gateway's /health answers 200 while degraded, 503 when down. grpc_health_probe would be one more binary to
download into every image; this uses the grpcio the services already carry. The module imports grpc
only for the gRPC probe, so an image without it (the llama.cpp server) runs this file on its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_S = 2.0


def check_grpc(target: str, service: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when `target` reports SERVING for `service` ("" = the whole server), else the reason."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
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
    http_probe = kinds.add_parser("http", help="GET, healthy on 2xx")
    http_probe.add_argument("url")
    http_probe.add_argument("--bearer-env", help="environment variable holding a bearer token to send")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kind == "grpc":
        problem = check_grpc(args.target, args.service, args.timeout)
    else:
        bearer = os.environ.get(args.bearer_env, "") if args.bearer_env else None
        problem = check_http(args.url, bearer, args.timeout)
    if problem:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
