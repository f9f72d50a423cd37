"""`python -m genai_devstack run`: the whole stack on this machine, no Docker, no GPU (the README's `make run`).

Reuses PostgreSQL and Redis when they answer on their standard ports (or at GENAI_POSTGRES_ADMIN_URL /
GENAI_REDIS_URL; a Redis that evicts gets a warning), otherwise starts them into the work folder: the
state Redis with noeviction and beside it a cache Redis with allkeys-lru (GENAI_CACHE_REDIS_URL: your
own). Then auth's and history's own PostgreSQL roles (genai_common.roles; their passwords kept in the
work folder), migrations and the first admin, then the model server, the four services and nginx under
honcho. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from honcho.manager import Manager

from genai_devstack import databases, infra, stack
from genai_devstack.tls import ensure_certificates


def _dev_secret(work_dir: Path) -> str:
    """The JWT signing secret of this work folder: random, made once, kept with mode 0600."""
    return databases.kept_secret(work_dir / "jwt-secret")


def _announce_when_ready(cfg: stack.StackConfig, stop: threading.Event) -> None:
    url = f"{cfg.base_url}/health"
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=str(cfg.tls.ca), timeout=2).status_code == 200:
                print(
                    "\n"
                    f"  GenAI is ready: {cfg.base_url}/\n"
                    f"  API docs:       {cfg.base_url}/docs\n"
                    f"  TLS CA file:    {cfg.tls.ca}  (curl --cacert it, or trust it in the browser)\n"
                    "  Log in as the admin printed above (first run) or any user an admin created:\n"
                    f"    curl --cacert {cfg.tls.ca} {cfg.base_url}/token -H 'Content-Type: application/json' \\\n"
                    '         -d \'{"username": "admin", "password": "..."}\'\n'
                    "  Ctrl-C stops everything.\n",
                    flush=True,
                )
                return
        stop.wait(1)


def run(args: argparse.Namespace) -> int:
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    started: list[infra.Service] = []
    try:
        postgres = infra.postgres_for_run(work_dir)
        started.append(postgres)
        redis = infra.redis_for_run(work_dir)
        started.append(redis)
        # Answers in a Redis that may evict them, apart from the state that must never be (production's split).
        cache_redis = infra.cache_redis_for_run(work_dir, redis)
        if cache_redis is not None:
            started.append(cache_redis)
        database_url = databases.create_database(postgres.url, args.database, exist_ok=True)
        ports = stack.Ports(https=args.port)
        cfg = stack.StackConfig(
            work_dir=work_dir,
            database_url=database_url,
            redis_url=redis.url,
            jwt_secret=_dev_secret(work_dir),
            tls=ensure_certificates(work_dir / "tls"),
            ports=ports,
            upstream=args.upstream,
            # Auth and history as roles of their own (passwords kept beside the JWT secret), as in production.
            service_database_urls=databases.service_database_urls(database_url, work_dir),
            overrides={"GENAI_GATEWAY_CACHE_REDIS_URL": cache_redis.url} if cache_redis else {},
        )
        env = {**os.environ, **stack.environment(cfg)}
        commands = stack.processes(cfg)
        # Migrations and the first admin; prints the generated admin password the first time only.
        subprocess.run(stack.init_command(), env=env, check=True)

        manager = Manager()
        for name, argv in commands.items():
            manager.add_process(name, shlex.join(argv), env=env)
        stop = threading.Event()
        threading.Thread(target=_announce_when_ready, args=(cfg, stop), daemon=True).start()
        manager.loop()
        stop.set()
        return manager.returncode or 0
    finally:
        for service in reversed(started):
            service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="genai-devstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="start the whole stack in the foreground")
    run_parser.add_argument("--work-dir", default=os.environ.get("GENAI_WORK_DIR", ".work"))
    run_parser.add_argument("--port", type=int, default=int(os.environ.get("GENAI_HTTPS_PORT", "8443")))
    run_parser.add_argument("--database", default=os.environ.get("GENAI_DATABASE_NAME", "genai"))
    run_parser.add_argument(
        "--upstream",
        choices=("llama", "sim"),
        default=os.environ.get("GENAI_UPSTREAM", "llama"),
        help="llama: llama.cpp server with SmolLM2 (default); sim: the vLLM simulator",
    )
    args = parser.parse_args()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
