"""The commands the containers run besides the services: health probes and the migrations job."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from genai_devstack import infra
from genai_devstack.nginx import repo_root

PROBE = repo_root() / "libs" / "common" / "src" / "genai_common" / "healthcheck.py"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "genai_common.healthcheck", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def grpc_health() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_grpc_probe_follows_the_serving_status(grpc_health: tuple[str, health.HealthServicer]) -> None:
    target, servicer = grpc_health
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("genai.auth.v1.AuthService", health_pb2.HealthCheckResponse.SERVING)
    assert probe("grpc", target).returncode == 0
    assert probe("grpc", target, "--service", "genai.auth.v1.AuthService").returncode == 0

    # What a service reports during its graceful shutdown.
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    down = probe("grpc", target)
    assert down.returncode == 1 and "NOT_SERVING" in down.stderr

    unknown = probe("grpc", target, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_grpc_probe_gives_up_within_its_deadline() -> None:
    started = time.monotonic()
    result = probe("--timeout", "1", "grpc", f"127.0.0.1:{infra.free_port()}")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    assert time.monotonic() - started < 10


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/ok":
            code = 200
        elif self.path == "/down":
            code = 503
        elif self.path == "/v1/models":
            code = 200 if self.headers.get("Authorization") == "Bearer k3y" else 401
        else:
            code = 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_probe_wants_a_2xx(http_server: str) -> None:
    assert probe("http", f"{http_server}/ok").returncode == 0
    down = probe("http", f"{http_server}/down")
    assert down.returncode == 1 and "503" in down.stderr
    refused = probe("http", f"http://127.0.0.1:{infra.free_port()}/health")
    assert refused.returncode == 1


def test_http_probe_runs_as_a_lone_file_with_a_bearer_token(http_server: str, tmp_path: Path) -> None:
    # The llama.cpp image has neither grpcio nor genai_common: it copies this one file. -S -I: no
    # site-packages and no project on the path, so only the standard library is there to import.
    lone = tmp_path / "healthcheck.py"
    shutil.copy(PROBE, lone)
    command = [
        sys.executable,
        "-S",
        "-I",
        str(lone),
        "http",
        f"{http_server}/v1/models",
        "--bearer-env",
        "API_KEY",
    ]
    with_key = subprocess.run(
        command, env={"API_KEY": "k3y"}, capture_output=True, text=True, timeout=30, check=False
    )
    assert with_key.returncode == 0, with_key.stderr
    without = subprocess.run(command, env={}, capture_output=True, text=True, timeout=30, check=False)
    assert without.returncode == 1 and "401" in without.stderr


def test_migrations_job_applies_the_history_schema_once(new_database_dsn: str) -> None:
    command = [
        sys.executable,
        "-m",
        "genai_common.migrations",
        "--component",
        "history",
        "--package",
        "genai_history",
        "--database-url-env",
        "HISTORY_DSN",
    ]
    first = subprocess.run(
        command,
        env={"HISTORY_DSN": new_database_dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"history: [1-9][0-9]* migration\(s\) applied", first.stdout), first.stdout
    again = subprocess.run(
        command,
        env={"HISTORY_DSN": new_database_dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0 and "0 migration(s) applied" in again.stdout

    async def state() -> tuple[list[str], bool]:
        conn = await asyncpg.connect(new_database_dsn)
        try:
            applied = [
                r["name"]
                for r in await conn.fetch(
                    "SELECT name FROM schema_migrations WHERE component = 'history' ORDER BY 1"
                )
            ]
            has_table = bool(await conn.fetchval("SELECT to_regclass('public.conversations') IS NOT NULL"))
            return applied, has_table
        finally:
            await conn.close()

    applied, has_table = asyncio.run(state())
    assert has_table and applied and applied[0].startswith("0001_")
    # The DSN never appears in what the job prints.
    assert new_database_dsn not in first.stdout + first.stderr


def test_migrations_job_fails_clearly(new_database_dsn: str) -> None:
    base = [sys.executable, "-m", "genai_common.migrations", "--component", "history"]
    unset = subprocess.run(
        [*base, "--package", "genai_history", "--database-url-env", "NOT_SET"],
        env={},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unset.returncode == 1 and "NOT_SET must be set" in unset.stdout
    missing = subprocess.run(
        [*base, "--package", "no_such_package", "--database-url-env", "DSN"],
        env={"DSN": new_database_dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1 and "no_such_package" in missing.stdout
    closed = f"postgresql://genai:s3cret-pw@127.0.0.1:{infra.free_port()}/genai"
    down = subprocess.run(
        [*base, "--package", "genai_history", "--database-url-env", "DSN"],
        env={"DSN": closed},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert down.returncode == 1 and "migrations of history failed" in down.stdout
    assert "s3cret-pw" not in down.stdout + down.stderr
