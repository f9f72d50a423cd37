"""The whole stack as real processes for the integration tests, built from the same pieces as `make run`."""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from genai_devstack import databases, infra, stack

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# An admin's access token lives 30 minutes (GENAI_AUTH_ACCESS_TTL_S); the harness signs in again after this.
ADMIN_TOKEN_RENEW_S = 600.0


def wait_for(condition: Callable[[], bool], timeout_s: float = 10, what: str = "condition") -> None:
    """Until `condition()` holds, or fail saying `what` did not happen within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@dataclass
class User:
    username: str
    password: str
    token: str
    id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class RunningStack:
    cfg: stack.StackConfig
    env: dict[str, str]
    commands: dict[str, list[str]]
    admin_username: str
    admin_password: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_dir: Path = ARTIFACTS / "logs"
    # Processes beyond the stack's own (extra gateways): their settings and port.
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    extra_ports: dict[str, int] = field(default_factory=dict)
    # The admin's access token for /health's details (`admin_headers`), and when it was taken (monotonic).
    _admin_token: str = ""
    _admin_token_at: float = 0.0

    # --- processes ----------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the process's life)
        self.procs[name] = subprocess.Popen(
            self.commands[name],
            env={**self.env, **self.extra_env.get(name, {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(name)

    def start_extra_gateway(self, name: str, **settings: str) -> str:
        """Another gateway process on the same Redis and services (a replica), with some settings of its
        own (GENAI_GATEWAY_<NAME>=value); returns its plain-HTTP base URL."""
        port = infra.free_port()
        self.commands[name] = self.commands["gateway"]
        self.extra_ports[name] = port
        self.extra_env[name] = {
            "GENAI_GATEWAY_PORT": str(port),
            "GENAI_GATEWAY_GRPC_PORT": str(infra.free_port()),
            "GENAI_GATEWAY_METRICS_PORT": str(infra.free_port()),
            **{f"GENAI_GATEWAY_{key.upper()}": value for key, value in settings.items()},
        }
        self.start(name)
        return f"http://127.0.0.1:{port}"

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def _port(self, name: str) -> int:
        if name in self.extra_ports:
            return self.extra_ports[name]
        p = self.cfg.ports
        return {
            "upstream": p.upstream,
            "auth": p.auth,
            "history": p.history,
            "adapter": p.adapter,
            "gateway": p.gateway,
            "nginx": p.https,
        }[name]

    def wait_ready(self, name: str, timeout_s: float = 180) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}"
                )
            if infra.port_open("127.0.0.1", self._port(name)):
                if name != "upstream" or self._upstream_ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} not ready within {timeout_s} s; see {self.log_dir / (name + '.log')}")

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Until the gateway sees every dependency again (its channels reconnect with a backoff). The public
        status says so: it is "ok" only while every dependency is."""
        deadline = time.monotonic() + timeout_s
        body: object = None
        with self.client(timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    body = client.get("/health").json()
                except httpx.HTTPError as exc:
                    body = repr(exc)
                if isinstance(body, dict) and body.get("status") == "ok":
                    return
                time.sleep(0.2)
        raise RuntimeError(f"stack not healthy within {timeout_s} s: {body}")

    def metrics_port(self, name: str) -> int:
        """The port of a process's own /metrics (never nginx's): a service's, or the simulator's API port."""
        if name in self.extra_env:
            (port,) = (v for k, v in self.extra_env[name].items() if k.endswith("_METRICS_PORT"))
            return int(port)
        p = self.cfg.ports
        return {
            "gateway": p.gateway_metrics,
            "auth": p.auth_metrics,
            "history": p.history_metrics,
            "adapter": p.adapter_metrics,
            "upstream": p.upstream,
        }[name]

    def metrics(self, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """A process's samples now: (name, sorted labels) -> value, read by prometheus_client's parser."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_port(name)}/metrics", timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def auth_cache_lookups(self, name: str = "gateway") -> dict[str, float]:
        """A gateway's credential checks so far, from its /metrics: "hit" (its cache), "miss" (asked auth)."""
        return {
            dict(labels)["result"]: value
            for (sample, labels), value in self.metrics(name).items()
            if sample == "genai_gateway_auth_cache_lookups_total"
        }

    # --- the simulator's own view (sim stacks only) ---------------------------------------------------

    def sim_stats(self) -> dict[str, object]:
        return dict(httpx.get(f"http://127.0.0.1:{self.cfg.ports.upstream}/sim/stats", timeout=5).json())

    def _upstream_ready(self) -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{self.cfg.ports.upstream}/v1/models", timeout=2).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    # --- clients ------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.cfg.base_url

    @property
    def ca(self) -> str:
        return str(self.cfg.tls.ca)

    def tls_context(self) -> ssl.SSLContext:
        """Trusts the stack's own CA only: the tests check certificates as a real client does."""
        return ssl.create_default_context(cafile=self.ca)

    def client(self, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.tls_context(), timeout=timeout)

    def async_client(self, timeout: float = 60) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.tls_context(), timeout=timeout)

    def login(self, username: str, password: str) -> str:
        with self.client() as client:
            response = client.post("/token", json={"username": username, "password": password})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def admin_headers(self) -> dict[str, str]:
        """An admin's bearer header, which makes GET /health show every dependency (anyone else gets the status
        only). Kept and reused, and renewed after ADMIN_TOKEN_RENEW_S when signing in works: a fault that
        stops sign-ins (PostgreSQL down) leaves a token taken before it valid, so take one before a fault."""
        stale = time.monotonic() - self._admin_token_at > ADMIN_TOKEN_RENEW_S
        if not self._admin_token or stale:
            try:
                self._admin_token = self.login(self.admin_username, self.admin_password)
                self._admin_token_at = time.monotonic()
            except httpx.HTTPError:
                if not self._admin_token:
                    raise
        return {"Authorization": f"Bearer {self._admin_token}"}

    def set_limits(self, user: User, **limits: int) -> None:
        admin = {"Authorization": f"Bearer {self.login(self.admin_username, self.admin_password)}"}
        with self.client() as client:
            response = client.patch(f"/api/v1/users/{user.username}", json={"limits": limits}, headers=admin)
        response.raise_for_status()

    def new_user(self, role: str = "user") -> User:
        """A user of its own for one test, so that rate limits and history never mix between tests."""
        admin_token = self.login(self.admin_username, self.admin_password)
        username = f"u{uuid.uuid4().hex[:10]}"
        password = secrets.token_urlsafe(16)
        with self.client() as client:
            created = client.post(
                "/api/v1/users",
                json={"username": username, "password": password, "role": role},
                headers={"Authorization": f"Bearer {admin_token}"},
            )
        created.raise_for_status()
        return User(username, password, self.login(username, password), created.json()["id"])


def launch(
    work_dir: Path,
    postgres_url: str,
    redis_url: str,
    upstream: str = "llama",
    upstream_args: list[str] | None = None,
    name: str = "stack",
    overrides: dict[str, str] | None = None,
    replicas: dict[str, int] | None = None,
) -> RunningStack:
    """The whole stack, started and healthy. `replicas`: how many processes of auth, history or the adapter
    to run (e.g. {"history": 2}); the further ones are named "history-2", ... (`RunningStack.procs`)."""
    from genai_devstack.tls import ensure_certificates

    ports = stack.Ports(
        https=infra.free_port(),
        http=infra.free_port(),
        gateway=infra.free_port(),
        gateway_grpc=infra.free_port(),
        auth=infra.free_port(),
        history=infra.free_port(),
        adapter=infra.free_port(),
        upstream=infra.free_port(),
        gateway_metrics=infra.free_port(),
        auth_metrics=infra.free_port(),
        history_metrics=infra.free_port(),
        adapter_metrics=infra.free_port(),
    )
    cfg = stack.StackConfig(
        work_dir=work_dir / name,
        database_url=postgres_url,
        redis_url=redis_url,
        jwt_secret=secrets.token_urlsafe(48),
        tls=ensure_certificates(work_dir / name / "tls"),
        ports=ports,
        upstream=upstream,
        upstream_args=upstream_args or [],
        overrides={
            # Answers stay short so the real model keeps the suite quick.
            "GENAI_GATEWAY_DEFAULT_MAX_TOKENS": "16",
            # The seeds' 30 requests a minute is what these tests check; concurrency limits are tested
            # with per-user overrides, so that bursts in other tests meet only the limit they are about.
            "GENAI_GATEWAY_LIMITS_USER__CONCURRENT_REQUESTS": "-1",
            # Small argon2 cost keeps logins fast in tests; production uses the library's defaults.
            "GENAI_AUTH_ARGON2_TIME_COST": "1",
            "GENAI_AUTH_ARGON2_MEMORY_COST": "8192",
            **(overrides or {}),
        },
        # Auth and history as roles of their own, as in production; one password per role for the whole
        # test session (the roles are the server's, shared by every stack's database).
        service_database_urls=databases.service_database_urls(postgres_url, work_dir),
        replicas=[
            stack.Replica(f"{service}-{n}", service, infra.free_port(), infra.free_port())
            for service, count in (replicas or {}).items()
            for n in range(2, count + 1)
        ],
    )
    admin_username, admin_password = f"admin{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)
    env = {
        **os.environ,
        **stack.environment(cfg),
        "GENAI_ADMIN_USER": admin_username,
        "GENAI_ADMIN_PASSWORD": admin_password,
    }
    running = RunningStack(
        cfg, env, stack.processes(cfg), admin_username, admin_password, log_dir=ARTIFACTS / "logs" / name
    )
    running.extra_env.update(stack.replica_environment(cfg))
    running.extra_ports.update((replica.name, replica.port) for replica in cfg.replicas)
    subprocess.run(stack.init_command(), env=env, check=True, capture_output=True)
    try:
        for name in running.commands:
            running.start(name)
        running.wait_healthy()
    except Exception:
        running.stop_all()
        raise
    return running
