"""The production compose stack, built and run for real: the README's "Production" steps, one by one.

A Docker engine of the test's own (Debian's dockerd, started here, stopped at the end whatever
happens) builds every image of deploy/docker-compose.yml on top of local stand-ins of the public base
images (tests/compose/stand-in-images.sh; no registry is reachable), brings the CPU profile up from a
`.env` made as an operator makes it (generated secrets, a self-signed certificate), waits for every
health check, and then talks to it only through nginx's published port: the first admin logs in,
creates a user, who asks llama.cpp with SmolLM2, streams an answer, lists the history and calls the
public gRPC API over TLS. The backup job's dump is restored into a fresh volume, the stack is taken
down and brought up again with its data intact, and finally everything is removed: no container,
network, volume or engine process is left behind, also when a step fails.

The engine's data root (GENAI_TEST_DOCKER_ROOT, default /var/lib/genai-test-docker) is kept between
runs, so images and build cache are reused. Measured figures (build and start-up times, image sizes,
memory per container) are written to test-artifacts/compose/report.txt, never asserted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from genai.assistant.v1 import assistant_pb2, assistant_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
HERE = Path(__file__).resolve().parent / "compose"
ARTIFACTS = ROOT / "test-artifacts" / "compose"
ENGINE_ROOT = Path(os.environ.get("GENAI_TEST_DOCKER_ROOT", "/var/lib/genai-test-docker"))
# The engine's default bridge (what builds use), made here: another dockerd on the host owns docker0 (or
# deletes it), and two engines sharing one bridge break each other's builds.
BRIDGE = "genaitest0"
BRIDGE_ADDRESS = os.environ.get("GENAI_TEST_DOCKER_BRIDGE", "172.31.254.1/24")
MODEL = "smollm2-135m-instruct"
# The six secrets compose requires (the first admin's password is left empty: generated, printed once).
SECRETS = (
    "POSTGRES_PASSWORD",
    "POSTGRES_AUTH_PASSWORD",
    "POSTGRES_HISTORY_PASSWORD",
    "REDIS_PASSWORD",
    "GENAI_AUTH_JWT_SECRET",
    "GENAI_UPSTREAM_API_KEY",
)
# Services of the CPU profile that keep running, and the one-shot jobs.
LONG_RUNNING = {
    "nginx",
    "gateway",
    "auth",
    "history",
    "inference-adapter",
    "llamacpp",
    "postgres",
    "redis",
    "redis-cache",
    "backup",
}
JOBS = {"pki", "postgres-roles", "migrate-auth", "migrate-history"}
UP_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


# --- the engine -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Engine:
    """A dockerd of the test's own, on its own socket, in its own session (killed as a whole)."""

    run_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    ip_forward_before: str | None = None

    def __post_init__(self) -> None:
        self.log = self.run_dir / "dockerd.log"

    @property
    def env(self) -> dict[str, str]:
        # Only what the tools need: a GENAI_* or COMPOSE_* variable of the test runner would override .env.
        keep = ("PATH", "HOME", "LANG", "SSL_CERT_FILE", "TMPDIR")
        env = {key: os.environ[key] for key in keep if key in os.environ}
        env["DOCKER_HOST"] = f"unix://{self.run_dir / 'docker.sock'}"
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
        return env

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self) -> None:
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
        if dockerd is None:
            pytest.skip("no dockerd (Debian's docker.io) and it could not be installed")
        ENGINE_ROOT.mkdir(parents=True, exist_ok=True)
        # Containers reach the package registries through the engine's NAT. Turned on here, dockerd
        # leaves the host's FORWARD policy alone; the old value comes back in stop().
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        self.ip_forward_before = forward.read_text().strip()
        if self.ip_forward_before != "1":
            forward.write_text("1\n")
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        for command in (
            ["ip", "link", "add", "name", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            made = subprocess.run(command, capture_output=True, text=True, check=False)
            if made.returncode != 0:
                self.stop()
                pytest.skip(f"cannot make the engine's bridge ({' '.join(command)}): {made.stderr.strip()}")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    dockerd,
                    "--data-root",
                    str(ENGINE_ROOT),
                    "--exec-root",
                    str(self.run_dir / "exec"),
                    "--pidfile",
                    str(self.run_dir / "dockerd.pid"),
                    "--host",
                    self.env["DOCKER_HOST"],
                    "--bridge",
                    BRIDGE,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        pytest.skip(f"dockerd could not be started here (no container engine):\n{tail}")

    def remove_everything(self) -> None:
        """Every container, volume and network of this engine (images stay, for the next run)."""
        containers = self.docker("ps", "-aq", check=False).stdout.split()
        if containers:
            self.docker("rm", "-f", "-v", *containers, check=False, timeout=300)
        volumes = self.docker("volume", "ls", "-q", check=False).stdout.split()
        if volumes:
            self.docker("volume", "rm", "-f", *volumes, check=False)
        self.docker("network", "prune", "-f", check=False)
        # The kept data root must not grow run after run: images replaced by a newer build, and build
        # cache beyond a bound (least recently used first; the llama.cpp compile is used every run).
        self.docker("image", "prune", "-f", check=False)
        self.docker("builder", "prune", "-f", "--keep-storage", "8GB", check=False, timeout=300)

    def leftovers(self) -> dict[str, list[str]]:
        networks = self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        return {
            "containers": self.docker("ps", "-aq").stdout.split(),
            "volumes": self.docker("volume", "ls", "-q").stdout.split(),
            "networks": [n for n in networks if n not in ("bridge", "host", "none")],
        }

    def stop(self) -> None:
        """dockerd and everything it started: SIGTERM (it stops containerd), then SIGKILL to what is left.

        What is left is found by the run folder in its command line (containerd and its shims run in
        sessions of their own, out of reach of dockerd's process group) and by dockerd's process group.
        """
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
        if self.ip_forward_before is not None and self.ip_forward_before != "1":
            Path("/proc/sys/net/ipv4/ip_forward").write_text(f"{self.ip_forward_before}\n")
            self.ip_forward_before = None

    def processes(self) -> list[int]:
        """Processes started by this engine: their command line names its run folder."""
        marker = str(self.run_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


@pytest.fixture(scope="module")
def engine_lock() -> Iterator[None]:
    """One engine on the data root at a time (two test runs on one host wait for each other)."""
    ENGINE_ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(ENGINE_ROOT.parent / f".{ENGINE_ROOT.name}.lock", "w") as lock:
        deadline = time.monotonic() + 3600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"another test run has held {ENGINE_ROOT} for an hour")
                time.sleep(5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def engine(engine_lock: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root; no container engine can be started as this user")
    installed = subprocess.run(
        [str(HERE / "install-engine.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if installed.returncode == 3:
        pytest.skip(f"no container engine can be installed here: {installed.stderr.strip()}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # A short path: the engine's sockets live under it (UNIX socket paths are limited to 108 bytes).
    run_dir = Path(tmp_path_factory.mktemp("dockerd", numbered=True))
    engine = Engine(run_dir)
    try:
        engine.start()
        yield engine
    finally:
        try:
            if engine.process is not None and engine.process.poll() is None:
                engine.remove_everything()
                left = engine.leftovers()
                assert left == {"containers": [], "volumes": [], "networks": []}, left
        finally:
            engine.stop()
            assert engine.process is None or engine.process.poll() is not None, "dockerd still running"
            assert engine.processes() == [], "processes of the engine still running"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(engine.log, ARTIFACTS / "dockerd.log")


# --- the deployment, as the README does it ----------------------------------------------------------------


@dataclass
class Deployment:
    """deploy/ with a .env of its own: `docker compose --env-file ENV -f deploy/docker-compose.yml ...`."""

    engine: Engine
    env_file: Path
    tls_dir: Path
    backup_dir: Path
    https_port: int
    report: list[str] = field(default_factory=list)

    def compose(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.engine.docker(
            "compose",
            "--env-file",
            str(self.env_file),
            "-f",
            str(COMPOSE_FILE),
            *args,
            timeout=timeout,
            check=check,
        )

    def timed(self, label: str, *args: str, timeout: float = 1800) -> None:
        started = time.monotonic()
        self.compose(*args, timeout=timeout)
        self.note(f"{label}: {time.monotonic() - started:.0f} s")

    def note(self, line: str) -> None:
        self.report.append(line)

    def setting(self, name: str) -> str:
        for line in self.env_file.read_text().splitlines():
            if line.startswith(f"{name}="):
                return line.split("=", 1)[1]
        raise KeyError(name)

    @property
    def ca(self) -> Path:
        return self.tls_dir / "server.crt"

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(base_url=f"https://localhost:{self.https_port}", verify=context, timeout=120)

    def states(self) -> dict[str, dict[str, str]]:
        """Service -> {State, Health, ExitCode} of its containers, from `docker compose ps -a`."""
        out = self.compose("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return {
            row["Service"]: {
                "State": row["State"],
                "Health": row.get("Health", ""),
                "ExitCode": str(row.get("ExitCode")),
            }
            for row in rows
        }

    def assert_all_healthy(self) -> None:
        states = self.states()
        assert set(states) == LONG_RUNNING | JOBS, states
        for name in LONG_RUNNING:
            assert (states[name]["State"], states[name]["Health"]) == ("running", "healthy"), (
                name,
                states[name],
            )
        for name in JOBS:
            assert (states[name]["State"], states[name]["ExitCode"]) == ("exited", "0"), (name, states[name])


def write_env(directory: Path, https_port: int, http_port: int) -> Path:
    """deploy/.env as the README makes it: the example, each secret `openssl rand -hex 32`."""
    env_file = directory / ".env"
    text = (DEPLOY / ".env.example").read_text()
    for name in SECRETS:
        value = subprocess.run(
            ["openssl", "rand", "-hex", "32"], capture_output=True, text=True, check=True
        ).stdout.strip()
        text, count = re.subn(rf"^{name}=$", f"{name}={value}", text, flags=re.M)
        assert count == 1, name
    # This host: loopback only, free ports, the test's own folders, as many llama.cpp threads as cores.
    text += (
        "\n# Test host\n"
        "GENAI_BIND_ADDRESS=127.0.0.1\n"
        f"GENAI_HTTPS_PORT={https_port}\n"
        f"GENAI_HTTP_PORT={http_port}\n"
        f"GENAI_TLS_DIR={directory / 'tls'}\n"
        f"GENAI_BACKUP_DIR={directory / 'backups'}\n"
        f"LLAMACPP_THREADS={os.cpu_count() or 1}\n"
    )
    env_file.write_text(text)
    env_file.chmod(0o600)
    return env_file


@pytest.fixture(scope="module")
def deployment(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = Path(tmp_path_factory.mktemp("deploy"))
    https_port, http_port = _free_port(), _free_port()
    deployment = Deployment(
        engine,
        write_env(directory, https_port, http_port),
        directory / "tls",
        directory / "backups",
        https_port,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield deployment
    finally:
        logs = deployment.compose("logs", "--no-color", "--timestamps", check=False, timeout=120)
        (ARTIFACTS / "compose.log").write_text(logs.stdout + logs.stderr)
        deployment.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)
        (ARTIFACTS / "report.txt").write_text("\n".join(deployment.report) + "\n")


# --- the test ---------------------------------------------------------------------------------------------


def test_production_stack_end_to_end(deployment: Deployment) -> None:
    d = deployment
    engine = d.engine

    # 0. Base images: local stand-ins (tests only; production pulls the official ones).
    started = time.monotonic()
    made = subprocess.run(
        [str(HERE / "stand-in-images.sh")],
        env=engine.env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-4000:]
    d.note(f"stand-in base images: {time.monotonic() - started:.0f} s")

    # 1. Certificate (README: ./nginx/make-selfsigned-cert.sh NAME).
    subprocess.run(
        [str(DEPLOY / "nginx" / "make-selfsigned-cert.sh"), "-d", str(d.tls_dir), "localhost", "127.0.0.1"],
        capture_output=True,
        check=True,
    )

    # 2. Images, then the stack, waiting for every health check.
    assert d.setting("COMPOSE_PROFILES") == "cpu"
    build_images(d)
    d.timed("docker compose up -d --wait", "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S))
    d.assert_all_healthy()
    record_sizes_and_memory(d)

    # 3. The first admin's password, printed once by the migrate-auth job.
    logs = d.compose("logs", "--no-color", "--no-log-prefix", "migrate-auth").stdout
    # Compose may still put terminal control sequences (erase line) before each line.
    logs = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", logs)
    found = re.search(r"^password: (\S+)$", logs, flags=re.M)
    assert found, logs
    admin_password = found.group(1)

    with d.client() as client:
        admin = login(client, "admin", admin_password)

        # 4. A user, created by the admin (password generated, shown once).
        created = client.post(
            "/api/v1/users", json={"username": "alice", "role": "user"}, headers=bearer(admin)
        )
        assert created.status_code in (200, 201), created.text
        alice_password = created.json()["password"]
        alice = login(client, "alice", alice_password)

        # 5. A question llama.cpp answers with SmolLM2.
        asked = client.post(
            "/ask",
            json={"prompt": "What does the ls command do?", "max_tokens": 24},
            headers=bearer(alice),
        )
        assert asked.status_code == 200, asked.text
        answer = asked.json()
        assert answer["source"] == "model" and answer["model"] == MODEL and answer["response"].strip()

        # 6. A streamed answer: several deltas, then done, then [DONE].
        events = []
        with client.stream(
            "POST",
            "/ask",
            json={"prompt": "Count from one to five.", "max_tokens": 24, "stream": True},
            headers=bearer(alice),
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
        assert events[-1] == "[DONE]", events
        parsed = [json.loads(event) for event in events[:-1]]
        assert [e["type"] for e in parsed].count("delta") >= 2, parsed
        assert parsed[-1]["type"] == "done" and parsed[-1]["source"] == "model"

        # 7. History: both conversations.
        history = client.get("/api/v1/history", headers=bearer(alice))
        assert history.status_code == 200, history.text
        conversations = {c["id"] for c in history.json()["conversations"]}
        assert answer["conversation_id"] in conversations and len(conversations) == 2

    # 8. The public gRPC API through nginx over TLS.
    credentials = grpc.ssl_channel_credentials(root_certificates=d.ca.read_bytes())
    with grpc.secure_channel(f"localhost:{d.https_port}", credentials) as channel:
        stub = assistant_pb2_grpc.AssistantStub(channel)
        reply = stub.Ask(
            assistant_pb2.AskRequest(prompt="Name a Linux command.", max_tokens=12),
            metadata=(("authorization", f"Bearer {alice}"),),
            timeout=120,
        )
    assert reply.response and reply.source == "model" and reply.model == MODEL

    # 9. Inside the stack: a container reaches the services of its networks only, and the internal gRPC
    # ports speak mutual TLS only.
    check_isolation(d)

    # 10. Backups: the one made at start already holds the schema (it runs after the migrations); a dump
    # now holds alice; restored into a fresh volume, she is there.
    first = sorted(d.backup_dir.glob("genai-*.dump"))
    assert first, "the backup service dumps at start"
    listing = d.compose("exec", "-T", "backup", "pg_restore", "--list", f"/backups/{first[0].name}").stdout
    # Each service's tables are in its role's own schema.
    assert "TABLE genai_auth users" in listing and "TABLE genai_history conversations" in listing, listing
    d.compose("exec", "-T", "backup", "/opt/genai/backup/backup.sh")
    dumps = sorted(d.backup_dir.glob("genai-*.dump"))
    assert len(dumps) > len(first), dumps
    restore_into_fresh_volume(d, dumps[-1].name)

    # 11. Down and up again (containers recreated, volumes kept): the data is still there.
    with d.client() as client:
        before = client.get("/api/v1/history", headers=bearer(alice)).json()["conversations"]
        first_dialog = client.get(
            f"/api/v1/history/{answer['conversation_id']}", headers=bearer(alice)
        ).json()
    assert len(before) == 3, before  # /ask, the streamed one, and the gRPC call's
    d.compose("down", timeout=300)
    d.timed(
        "docker compose up -d --wait (again, images built)",
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        str(UP_TIMEOUT_S),
    )
    d.assert_all_healthy()
    with d.client() as client:
        alice = login(client, "alice", alice_password)
        history = client.get("/api/v1/history", headers=bearer(alice))
        assert history.json()["conversations"] == before
        dialog = client.get(f"/api/v1/history/{answer['conversation_id']}", headers=bearer(alice)).json()
        assert dialog == first_dialog
        assert [m["response"] for m in dialog["messages"]] == [answer["response"]]
        again = client.post(
            "/ask", json={"prompt": "What does the ls command do?", "max_tokens": 24}, headers=bearer(alice)
        )
        assert again.status_code == 200 and again.json()["response"].strip()


# Opens a TCP connection to argv[1]:argv[2] from inside a container: exit 0 when it connects, 3 (and why)
# when the name does not resolve or nothing answers.
_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError as exc:
    print(exc)
    sys.exit(3)
"""


def check_isolation(d: Deployment) -> None:
    def connects(service: str, host: str, port: int) -> bool:
        result = d.compose("exec", "-T", service, "python", "-c", _CONNECT, host, str(port), check=False)
        assert result.returncode in (0, 3), result.stderr
        return result.returncode == 0

    # Each callee from its caller, and from a container that has no business there.
    assert connects("inference-adapter", "llm", 8000)
    assert connects("auth", "postgres", 5432) and connects("history", "postgres", 5432)
    assert connects("gateway", "redis", 6379) and connects("gateway", "redis-cache", 6379)
    assert connects("inference-adapter", "redis", 6379)  # the shared fair queue
    for service in ("gateway", "auth", "history"):
        assert not connects(service, "llm", 8000), f"{service} reaches the model server"
    for service in ("gateway", "inference-adapter"):
        assert not connects(service, "postgres", 5432), f"{service} reaches PostgreSQL"
    assert not connects("history", "redis", 6379) and not connects("auth", "redis-cache", 6379)
    assert not connects("inference-adapter", "auth", 50051), "the adapter reaches auth"
    # The gateway reaches auth, but a plaintext health check there is refused (mTLS only); the probe with
    # auth's own certificate, as its container runs it, passes.
    plain = d.compose(
        "exec", "-T", "gateway", "python", "-m", "genai_common.healthcheck", "grpc", "auth:50051", check=False
    )
    assert plain.returncode == 1, plain.stdout + plain.stderr
    own = d.compose("exec", "-T", "auth", "/opt/genai/healthcheck", check=False)
    assert own.returncode == 0, own.stdout + own.stderr


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client: httpx.Client, username: str, password: str) -> str:
    response = client.post("/token", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def restore_into_fresh_volume(d: Deployment, dump: str) -> None:
    """operations.md's rehearsal: a new PostgreSQL on a new volume, the dump restored into it, read back."""
    engine = d.engine
    name = "genai-restore-check"
    user = "genai"
    password = d.setting("POSTGRES_PASSWORD")
    engine.docker("volume", "create", name)
    try:
        engine.docker(
            "run", "-d", "--name", name, "--network", "genai_postgres",
            "-v", f"{name}:/var/lib/postgresql/data",
            "-e", f"POSTGRES_USER={user}", "-e", f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=genai",
            "postgres:16",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while engine.docker(
            "exec", name, "pg_isready", "-h", "127.0.0.1", "-U", user, check=False
        ).returncode:
            assert time.monotonic() < deadline, engine.docker("logs", name, check=False).stderr
            time.sleep(1)
        d.compose(
            "run", "--rm", "--no-deps", "-e", f"PGHOST={name}",
            "--entrypoint", "/opt/genai/backup/restore.sh", "backup", f"/backups/{dump}",
        )  # fmt: skip
        users = engine.docker(
            "exec", name, "psql", "-U", user, "-d", "genai", "-tAc",
            "SELECT username FROM genai_auth.users ORDER BY 1",
        ).stdout.split()  # fmt: skip
        assert users == ["admin", "alice"], users
        messages = engine.docker(
            "exec", name, "psql", "-U", user, "-d", "genai", "-tAc",
            "SELECT count(*) FROM genai_history.messages",
        ).stdout.strip()  # fmt: skip
        assert int(messages) >= 2, messages
    finally:
        engine.docker("rm", "-f", "-v", name, check=False)
        engine.docker("volume", "rm", "-f", name, check=False)


# What a build says when a registry's name failed to resolve for a moment (the host's resolver, asked by
# several image builds at once): such a build is tried again; any other failure fails at once.
TRANSIENT_BUILD_ERRORS = ("Temporary failure in name resolution", "Connection reset by peer")
BUILD_ATTEMPTS = 3


def build_images(d: Deployment) -> None:
    started = time.monotonic()
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        result = d.compose("build", timeout=1800, check=False)
        if result.returncode == 0:
            break
        output = result.stdout + result.stderr
        if attempt == BUILD_ATTEMPTS or not any(error in output for error in TRANSIENT_BUILD_ERRORS):
            raise AssertionError(f"docker compose build failed:\n{result.stdout}\n{result.stderr}")
        d.note(f"docker compose build: attempt {attempt} failed on the network, tried again")
    d.note(f"docker compose build: {time.monotonic() - started:.0f} s")


def record_sizes_and_memory(d: Deployment) -> None:
    """Image sizes and each container's memory just after start-up, for docs/operations.md."""
    images = d.engine.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}").stdout
    d.note("images:")
    d.report.extend(f"  {line}" for line in sorted(images.splitlines()) if line.startswith("genai"))
    stats = d.engine.docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.CPUPerc}}").stdout
    d.note("memory after start-up (docker stats):")
    d.report.extend(f"  {line}" for line in sorted(stats.splitlines()))
