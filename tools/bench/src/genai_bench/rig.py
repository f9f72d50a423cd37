"""Everything under test, started for one bench run and stopped after it.

The stack is started exactly as the integration tests start it (tests/harness.py: the same processes,
settings and nginx config as `make run`), against the vLLM simulator, with PostgreSQL and Redis of the
bench's own so that their memory and CPU can be read and nobody else's load lands on them. As in `make run`
and the compose stack, the answer cache has a Redis of its own (allkeys-lru) beside the state Redis
(limits, the history journal; noeviction). LiteLLM's
proxy, in its two configurations (the feature-matched one with a Redis of its own), is pointed at the
same simulator port, so a simulator restart (other flags) serves all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from genai_bench import litellm
from genai_bench.load import MODEL, Target
from genai_devstack import databases, infra, stack

# The simulator logs no line per request here (the stack's default is one, with its request id): the
# figures are the path's, not the simulator's logging.
SIM_BASE_FLAGS = [
    *("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", "16", "--max-num-seqs", "256"),
    *("--log-level", "warning"),
]

# Names of LiteLLM's feature-matched configuration (target and component) and of its Redis (component).
LITELLM_MATCHED = "litellm-fm"
LITELLM_REDIS = "redis (litellm-fm)"
# The answer cache's Redis (component).
CACHE_REDIS = "redis (cache)"

# Settings of the stack under test: no per-user limit may throttle the load, and the adapter's fair
# queue lets as many generations through as the simulator runs at once.
STACK_OVERRIDES = {
    "GENAI_GATEWAY_LIMITS_USER": json.dumps({"requests_per_minute": -1, "concurrent_requests": -1}),
    "GENAI_ADAPTER_MAX_CONCURRENT": "256",
}
# nginx's cap on requests open at once from one address: the memory phase's streams all come from the load
# generator's one address (production keeps its own setting, 256 by default).
NGINX_CONN_PER_ADDRESS = 2048


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "tests" / "harness.py").is_file():
            return parent
    raise RuntimeError("cannot find tests/harness.py above the bench package")


def load_harness() -> ModuleType:
    """tests/harness.py, loaded by path: the tests' folder is not an installed package."""
    path = repo_root() / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("genai_bench_harness", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class RedisMonitor:
    """Every command the Redis servers run while open (MONITOR), by command, apart for those run inside
    Lua scripts.

    INFO commandstats counts a script's inner commands like a client's, so it cannot tell round trips
    from work inside one EVALSHA; MONITOR marks the inner ones with "lua". Only for short counting runs:
    MONITOR slows Redis down.
    """

    def __init__(self, *servers: infra.Service) -> None:
        self.servers = servers
        self.client: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RedisMonitor:
        for server in self.servers:
            self._watch(server.host, server.port)
        return self

    def _watch(self, host: str, port: int) -> None:
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(b"MONITOR\r\n")
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"+OK"):
            raise RuntimeError("Redis refused MONITOR")
        sock.settimeout(0.2)

        def read() -> None:
            try:
                while not self._stop.is_set():
                    try:
                        line = reader.readline()
                    except (TimeoutError, OSError):
                        continue
                    if not line:
                        return
                    self._count(line)
            finally:
                reader.close()
                sock.close()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _count(self, line: bytes) -> None:
        # +1700000000.123456 [0 127.0.0.1:5000] "evalsha" "..."   or   [0 lua] "zadd" ...
        head, _, rest = line.partition(b"] ")
        if not rest.startswith(b'"'):
            return
        command = rest[1 : rest.index(b'"', 1)].decode(errors="replace").lower()
        with self._lock:
            (self.scripted if head.endswith(b" lua") else self.client)[command] += 1

    def __exit__(self, *exc: object) -> None:
        # Lines already sent are read before the thread is told to stop.
        time.sleep(0.5)
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


def _postmaster_pid(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


@dataclass
class Rig:
    work_dir: Path
    postgres: infra.Service
    redis: infra.Service
    cache_redis: infra.Service
    database: str
    running: Any  # tests.harness.RunningStack
    user: Any  # tests.harness.User
    lite: litellm.LiteLLM | None
    postgres_pid: int | None
    # LiteLLM's feature-matched configuration, and its Redis (rate limits, response cache).
    lite_matched: litellm.LiteLLM | None = None
    lite_redis: infra.Service | None = None
    started_at: float = field(default_factory=time.monotonic)

    # --- targets ---------------------------------------------------------------------------------------

    @property
    def sim_port(self) -> int:
        return int(self.running.cfg.ports.upstream)

    def direct(self) -> Target:
        return Target("direct", f"http://127.0.0.1:{self.sim_port}/v1")

    def ours(self, cache: bool = False) -> Target:
        headers = dict(self.user.headers)
        if not cache:
            headers["Cache-Control"] = "no-cache"
        return Target(
            "ours", f"{self.running.base_url}/v1", headers=headers, verify=self.running.tls_context()
        )

    def gateway_plain(self) -> Target:
        """The gateway without nginx (plain HTTP on its own port): what nginx and TLS add is the difference."""
        headers = {**self.user.headers, "Cache-Control": "no-cache"}
        return Target("gateway", f"http://127.0.0.1:{self.running.cfg.ports.gateway}/v1", headers=headers)

    def litellm_target(self) -> Target | None:
        return self.lite.target if self.lite else None

    def litellm_targets(self) -> list[Target]:
        """Every LiteLLM configuration that runs: the baseline first, then the feature-matched one."""
        return [lite.target for lite in (self.lite, self.lite_matched) if lite is not None]

    # --- processes -------------------------------------------------------------------------------------

    def process_roots(self, with_litellm: bool = True) -> dict[str, int]:
        roots = {name: proc.pid for name, proc in self.running.procs.items()}
        roots["simulator"] = roots.pop("upstream")
        redis_proc = getattr(self.redis, "process", None)
        if redis_proc is not None:
            roots["redis"] = redis_proc.pid
        cache_proc = getattr(self.cache_redis, "process", None)
        if cache_proc is not None:
            roots[CACHE_REDIS] = cache_proc.pid
        if self.postgres_pid:
            roots["postgres"] = self.postgres_pid
        if with_litellm:
            for lite in (self.lite, self.lite_matched):
                if lite is not None:
                    roots[lite.name] = lite.proc.pid
            lite_redis = getattr(self.lite_redis, "process", None)
            if lite_redis is not None:
                roots[LITELLM_REDIS] = lite_redis.pid
        return roots

    def restart_simulator(self, flags: list[str]) -> None:
        """The same port with other flags; the adapter and LiteLLM reconnect to it."""
        self.running.stop("upstream")
        self.running.cfg.upstream_args = flags
        self.running.commands["upstream"] = stack.upstream_command(self.running.cfg)
        self.running.start("upstream")

    def restart_adapter(self, **env: str) -> None:
        self.running.stop("adapter")
        self.running.extra_env["adapter"] = dict(env)
        self.running.start("adapter")
        self.running.wait_healthy(60)

    def sim_stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"http://127.0.0.1:{self.sim_port}/sim/stats", timeout=5).json())

    def redis_monitor(self) -> RedisMonitor:
        return RedisMonitor(self.redis, self.cache_redis)

    def postgres_transactions(self) -> int:
        """Transactions committed in the stack's database so far (pg_stat_database)."""
        import asyncio

        import asyncpg

        async def read() -> int:
            conn = await asyncpg.connect(self.postgres.url, timeout=10)
            try:
                # Statistics are flushed by each backend at most once a second.
                await conn.execute("SELECT pg_stat_clear_snapshot()")
                value = await conn.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                    self.database,
                )
                return int(value or 0)
            finally:
                await conn.close()

        return asyncio.run(read())

    def close(self) -> None:
        for lite in (self.lite, self.lite_matched):
            if lite is not None:
                lite.stop()
        if self.lite_redis is not None:
            self.lite_redis.stop()
        with contextlib.suppress(Exception):
            self.running.stop_all()
        with contextlib.suppress(Exception):
            databases.drop_database(self.postgres.url, self.database)
        self.redis.stop()
        self.cache_redis.stop()
        self.postgres.stop()


def _postgres(work_dir: Path) -> tuple[infra.Service, int | None]:
    given = os.environ.get("GENAI_BENCH_POSTGRES_URL")
    if given:
        return infra.Service(url=given, host="", port=0), None
    data_dir = work_dir / "pgdata"
    service = infra.start_local_postgres(data_dir, infra.free_port())
    return service, _postmaster_pid(data_dir)


def start(
    work_dir: Path, with_litellm: bool = True, litellm_workers: int = 2, litellm_matched: bool = True
) -> Rig:
    """PostgreSQL, Redis, the stack on the simulator, and LiteLLM beside it, all ready."""
    work_dir.mkdir(parents=True, exist_ok=True)
    harness = load_harness()
    postgres, postgres_pid = _postgres(work_dir)
    redis = None
    cache_redis = None
    lites: list[litellm.LiteLLM] = []
    lite_redis = None
    running = None
    database = f"genai_bench_{uuid.uuid4().hex[:10]}"
    try:
        redis = infra.start_local_redis(work_dir / "redis", infra.free_port())
        cache_redis = infra.start_local_redis(
            work_dir / "redis-cache",
            infra.free_port(),
            maxmemory=infra.CACHE_MAXMEMORY,
            policy=infra.CACHE_POLICY,
        )
        database_url = databases.create_database(postgres.url, database)
        running = harness.launch(
            work_dir,
            database_url,
            redis.url,
            upstream="sim",
            upstream_args=list(SIM_BASE_FLAGS),
            name="bench",
            overrides={
                **STACK_OVERRIDES,
                "GENAI_NGINX_CONN_PER_ADDRESS": str(NGINX_CONN_PER_ADDRESS),
                "GENAI_GATEWAY_CACHE_REDIS_URL": cache_redis.url,
            },
        )
        sim_port = running.cfg.ports.upstream
        if with_litellm:
            lites.append(litellm.start(work_dir, sim_port, infra.free_port(), litellm_workers))
            if litellm_matched:
                # A Redis of its own, like ours: its memory and CPU are LiteLLM's, not our path's.
                lite_redis = infra.start_local_redis(work_dir / "litellm-redis", infra.free_port())
                lites.append(
                    litellm.start(
                        work_dir,
                        sim_port,
                        infra.free_port(),
                        litellm_workers,
                        name=LITELLM_MATCHED,
                        redis=litellm.Redis(lite_redis.host, lite_redis.port),
                    )
                )
        user = running.new_user()
        for lite in lites:
            lite.wait_ready()
        for lite in lites:
            lite.wait_quiet()
        return Rig(
            work_dir,
            postgres,
            redis,
            cache_redis,
            database,
            running,
            user,
            lites[0] if lites else None,
            postgres_pid,
            lites[1] if len(lites) > 1 else None,
            lite_redis,
        )
    except BaseException:
        for lite in lites:
            lite.stop()
        if lite_redis is not None:
            lite_redis.stop()
        if running is not None:
            running.stop_all()
        if redis is not None:
            redis.stop()
        if cache_redis is not None:
            cache_redis.stop()
        postgres.stop()
        raise


def smoke(target: Target) -> None:
    """One request, checked: the target answers a chat completion from the simulator's model."""
    with httpx.Client(
        base_url=target.base_url, headers=target.headers, verify=target.verify, timeout=30
    ) as c:
        response = c.post("/chat/completions", json=target.chat_body("hello", 16))
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    if body.get("model") != MODEL or not body["choices"][0]["message"]["content"]:
        raise RuntimeError(f"{target.name}: unexpected answer {body}")
