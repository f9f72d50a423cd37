"""PostgreSQL and Redis for the embedded stack and the tests: reused when reachable, otherwise started.

Order of preference: an address given in the environment; a Docker engine through testcontainers (tests
only); a server already listening on the standard port (make run only); a local server process started
from the machine's own binaries into a work folder.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


# Ports handed out by this process, never handed out twice.
_GIVEN: set[int] = set()
# Below the kernel's ephemeral range: a port taken from inside it can be given to an outgoing connection
# (any client socket) between the moment it is picked and the moment its server binds it, and then the
# server cannot start. Out of that range only another server can take it.
_LISTEN_PORTS = range(20000, 32768)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a server about to start."""
    start = _ephemeral_start()
    candidates = [port for port in _LISTEN_PORTS if port < start and port not in _GIVEN]
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    # No such range on this machine: whatever the kernel picks.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not open {host}:{port} within {timeout_s:.0f} s")


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian and Red OS keep PostgreSQL's server binaries outside PATH.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) + sorted(
        glob.glob(f"/usr/pgsql-*/bin/{name}")
    )
    return candidates[-1] if candidates else None


def docker_available() -> bool:
    """True only when a Docker engine answers, not merely when the client is installed."""
    if not shutil.which("docker"):
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@dataclass
class Service:
    """A server the stack uses, and how to give it back when done."""

    url: str
    host: str
    port: int
    _cleanup: list[object] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        while self._cleanup:
            action = self._cleanup.pop()
            with contextlib.suppress(Exception):
                action()  # type: ignore[operator]


# --- PostgreSQL -------------------------------------------------------------------------------------


def _run_as_postgres_owner() -> list[str]:
    """PostgreSQL refuses to run as root; as root, run its binaries as the 'postgres' system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs a 'postgres' system user to start PostgreSQL") from exc
    return ["runuser", "-u", "postgres", "--"]


def start_local_postgres(data_dir: Path, port: int) -> Service:
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("PostgreSQL is not reachable and its binaries (initdb, pg_ctl) are not installed")
    prefix = _run_as_postgres_owner()
    data_dir.mkdir(parents=True, exist_ok=True)
    if prefix:
        shutil.chown(data_dir, "postgres", "postgres")
        shutil.chown(data_dir.parent, "postgres", "postgres")
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [
                *prefix,
                initdb,
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
        )
    log = data_dir.parent / "postgres.log"
    if prefix:
        log.touch()
        shutil.chown(log, "postgres", "postgres")
    options = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data_dir), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
        check=True,
        capture_output=True,
    )
    service = Service(url=f"postgresql://postgres@127.0.0.1:{port}/postgres", host="127.0.0.1", port=port)
    service._cleanup.append(
        lambda: subprocess.run(
            [*prefix, pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
    )
    logger.info("started PostgreSQL on 127.0.0.1:%s (data in %s)", port, data_dir)
    return service


def postgres_for_tests(work_dir: Path) -> Service:
    """A PostgreSQL server for a test run: GENAI_TEST_POSTGRES_URL, testcontainers, reachable, or local."""
    given = os.environ.get("GENAI_TEST_POSTGRES_URL")
    if given:
        return Service(url=given, host="", port=0)
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
        service = Service(
            url=container.get_connection_url(),
            host=container.get_container_host_ip(),
            port=int(container.get_exposed_port(5432)),
        )
        service._cleanup.append(container.stop)
        return service
    if port_open("127.0.0.1", 5432):
        return Service(url="postgresql://postgres@127.0.0.1:5432/postgres", host="127.0.0.1", port=5432)
    return start_local_postgres(work_dir / "pgdata", free_port())


def postgres_for_run(work_dir: Path) -> Service:
    """The embedded default: GENAI_POSTGRES_ADMIN_URL, a server on 5432, or one started into the work folder."""
    given = os.environ.get("GENAI_POSTGRES_ADMIN_URL")
    if given:
        return Service(url=given, host="", port=0)
    if port_open("127.0.0.1", 5432):
        return Service(url="postgresql://postgres@127.0.0.1:5432/postgres", host="127.0.0.1", port=5432)
    return start_local_postgres(
        work_dir / "pgdata", 5433 if not port_open("127.0.0.1", 5433) else free_port()
    )


def database_url(server_url: str, database: str) -> str:
    """The same server URL with another database name."""
    base, _, rest = server_url.rpartition("/")
    query = ""
    if "?" in rest:
        query = "?" + rest.split("?", 1)[1]
    return f"{base}/{database}{query}"


# --- Redis ------------------------------------------------------------------------------------------


# Eviction policies (docs/operations.md, "Redis"). State (limits, revoked tokens, the history spool) must
# never be evicted: at its maxmemory its Redis refuses writes, which the services treat as an outage. The
# answer cache may lose any entry: its Redis makes room by dropping the least recently used.
STATE_POLICY = "noeviction"
CACHE_POLICY = "allkeys-lru"
# The embedded stack's cache Redis: plenty for a developer's answers, a bound all the same.
CACHE_MAXMEMORY = "128mb"


def start_local_redis(
    work_dir: Path, port: int, *, maxmemory: str = "0", policy: str = STATE_POLICY
) -> Service:
    """A redis-server process of our own; `maxmemory` "0" is no limit (then the policy never acts)."""
    binary = find_binary("redis-server")
    if not binary:
        raise RuntimeError("Redis is not reachable and redis-server is not installed")
    work_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            maxmemory,
            "--maxmemory-policy",
            policy,
            "--dir",
            str(work_dir),
            "--logfile",
            str(work_dir / f"redis-{port}.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, 10, "redis-server")
    service = Service(url=f"redis://127.0.0.1:{port}/0", host="127.0.0.1", port=port)
    service.process = process  # type: ignore[attr-defined]

    def stop() -> None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()

    service._cleanup.append(stop)
    return service


def evicting_policy(url: str) -> str | None:
    """The eviction policy of the Redis at `url` if it may evict keys (a memory limit and a policy other
    than noeviction), else None; None too when it will not say (CONFIG renamed away, as managed Redis do)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        config = client.config_get("maxmemory*")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    policy = str(config.get("maxmemory-policy", STATE_POLICY))
    if int(config.get("maxmemory", 0) or 0) > 0 and policy != STATE_POLICY:
        return policy
    return None


def redis_for_tests(work_dir: Path) -> Service:
    """A Redis of the test run's own, so tests may stop and start it: local process, or testcontainers."""
    given = os.environ.get("GENAI_TEST_REDIS_URL")
    if given:
        return Service(url=given, host="", port=0)
    if find_binary("redis-server"):
        return start_local_redis(work_dir, free_port())
    if docker_available():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7-alpine")
        container.start()
        host, port = container.get_container_host_ip(), int(container.get_exposed_port(6379))
        service = Service(url=f"redis://{host}:{port}/0", host=host, port=port)
        service._cleanup.append(container.stop)
        return service
    if port_open("127.0.0.1", 6379):
        return Service(url="redis://127.0.0.1:6379/14", host="127.0.0.1", port=6379)
    raise RuntimeError("no Redis: install redis-server or run a Docker engine")


def redis_for_run(work_dir: Path) -> Service:
    """The state Redis of the embedded stack: GENAI_REDIS_URL, a server on 6379, or one started (noeviction).
    One we did not start is only checked: its policy is its owner's, so an evicting one gets a warning."""
    given = os.environ.get("GENAI_REDIS_URL")
    service = None
    if given:
        service = Service(url=given, host="", port=0)
    elif port_open("127.0.0.1", 6379):
        service = Service(url="redis://127.0.0.1:6379/0", host="127.0.0.1", port=6379)
    if service is None:
        return start_local_redis(
            work_dir / "redis", 6380 if not port_open("127.0.0.1", 6380) else free_port()
        )
    policy = evicting_policy(service.url)
    if policy:
        logger.warning(
            "the Redis at %s evicts keys when full (maxmemory-policy %s): limits, revoked tokens and "
            "answers waiting for history may be dropped; set maxmemory-policy noeviction there "
            '(docs/operations.md, "Redis")',
            "GENAI_REDIS_URL" if given else "127.0.0.1:6379",
            policy,
        )
    return service


def cache_redis_for_run(work_dir: Path, state: Service) -> Service | None:
    """The answer cache's Redis of the embedded stack: GENAI_CACHE_REDIS_URL, or, beside a state Redis we
    started, another one started (allkeys-lru, CACHE_MAXMEMORY), as in production. None: the state Redis
    holds the cache too (it is someone else's, and so is its memory)."""
    given = os.environ.get("GENAI_CACHE_REDIS_URL")
    if given:
        return Service(url=given, host="", port=0)
    if getattr(state, "process", None) is None:
        return None
    return start_local_redis(
        work_dir / "redis-cache",
        6381 if not port_open("127.0.0.1", 6381) else free_port(),
        maxmemory=CACHE_MAXMEMORY,
        policy=CACHE_POLICY,
    )


@contextlib.contextmanager
def started(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
