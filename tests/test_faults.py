"""Fault injection under load (issue 18): each single failure of a dependency, injected into the suite's
own processes (its own PostgreSQL and Redis, never the machine's shared ones) while users ask through
nginx. For every fault the suite checks that no answer was a 500, that every refused request got a 503
with Retry-After and a message naming what is unavailable, that every answered exchange is in history
after recovery, that the limits stayed exact, and that the stack is healthy again without a restart of
anything but the failed part. It prints a table of the outcomes at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from genai_devstack import databases, infra
from genai_devstack.stack import environment
from tests.faults import Load, Outcome, OwnPostgres, garbage_server, post, stopped_process, titles
from tests.harness import ARTIFACTS, RunningStack, User, launch

# The limit of each fault's limited user, and how many requests it sends during the fault.
LIMIT = 4
LIMIT_TRIES = 6
# The client's patience for one request: beyond every deadline of the stack below.
CLIENT_TIMEOUT_S = 40.0


@dataclass
class Row:
    fault: str
    answered: int
    refused_503: int
    errors_500: int
    other: int
    lost: int
    # Sent again on a new connection because nginx closed the first one before reading it (`post`).
    resent: int = 0
    note: str = ""


@dataclass
class Window:
    """When the fault was in place (monotonic clock): from after its injection to its removal."""

    start: float = 0.0
    end: float = 0.0


@dataclass
class Bench:
    stack: RunningStack
    postgres: OwnPostgres
    users: list[User]
    limited: dict[str, User]
    rows: list[Row] = field(default_factory=list)


FAULTS = [
    "postgres stopped 30 s",
    "postgres hung (SIGSTOP)",
    "postgres restarted",
    "history killed, restarted",
    "history hung (SIGSTOP)",
    "auth killed, restarted",
    "auth hung (SIGSTOP)",
    "adapter killed, restarted",
    "adapter hung (SIGSTOP)",
    "model server down",
    "model server hung (SIGSTOP)",
    "model server slow",
    "model server resets mid-stream",
    "model server answers garbage",
    "nginx reloaded",
]


def _table(rows: list[Row]) -> list[str]:
    header = ("fault", "answered", "refused 503", "500s", "other", "lost", "resent", "")
    lines = [header] + [
        (
            r.fault,
            str(r.answered),
            str(r.refused_503),
            str(r.errors_500),
            str(r.other),
            str(r.lost),
            str(r.resent),
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def _print_table(request: pytest.FixtureRequest, rows: list[Row]) -> None:
    """On the terminal past pytest's capture, and into test-artifacts/ for the record."""
    lines = ["fault injection under load (tests/test_faults.py):", *_table(rows)]
    (ARTIFACTS / "faults.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "faults.txt").write_text("\n".join(lines) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("")
        for line in lines:
            reporter.write_line("  " + line)


@pytest.fixture(scope="module")
def bench(work_dir: Path, request: pytest.FixtureRequest) -> Iterator[Bench]:
    postgres = OwnPostgres()
    redis_server = infra.start_local_redis(work_dir / "faults-redis", infra.free_port())
    stack: RunningStack | None = None
    result: Bench | None = None
    try:
        stack = launch(
            work_dir,
            databases.create_database(postgres.url),
            redis_server.url,
            upstream="sim",
            upstream_args=["--output-tokens", "8"],
            name="faults-stack",
            overrides={
                # Deadlines short enough for the suite to see hung parts cut off; the defaults (120 s for
                # a generation, 60 s without a byte from the model server) behave the same, only later.
                "GENAI_GATEWAY_GENERATE_TIMEOUT_S": "8",
                "GENAI_ADAPTER_READ_TIMEOUT_S": "4",
                "GENAI_GATEWAY_SPOOL_DRAIN_INTERVAL_S": "1",
                # The simulator's words carry no meaning; the similar-request layer is tested on `live`.
                "GENAI_GATEWAY_SIMILAR_ENABLED": "false",
            },
        )
        users = [stack.new_user() for _ in range(3)]
        for user in users:
            stack.set_limits(user, requests_per_minute=-1)
        limited = {}
        for fault in FAULTS:
            limited[fault] = stack.new_user()
            stack.set_limits(limited[fault], requests_per_minute=LIMIT)
        # Before any fault: a sign-in is refused while PostgreSQL is down, a token taken earlier is not.
        stack.admin_headers()
        result = Bench(stack, postgres, users, limited)
        yield result
    finally:
        if stack is not None:
            stack.stop_all()
        redis_server.stop()
        postgres.close()
    if result is not None and result.rows:
        _print_table(request, result.rows)


# --- checks ---------------------------------------------------------------------------------------


def _ask(stack: RunningStack, user: User, label: str, **extra: Any) -> Outcome:
    prompt = f"{label} {uuid.uuid4().hex[:12]}"
    outcome = Outcome(user, prompt, 0)
    with stack.client(timeout=CLIENT_TIMEOUT_S) as client:
        post(client, outcome, {"prompt": prompt, "max_tokens": 8, **extra})
    return outcome


def _health(stack: RunningStack) -> dict[str, Any]:
    """/health as an admin sees it (every dependency); the token was taken before the fault (`bench`). While
    auth cannot check it the body has the status only, so checks read the details with .get()."""
    with stack.client(timeout=15) as client:
        return dict(client.get("/health", headers=stack.admin_headers()).json())


def _wait_for_health(
    stack: RunningStack, check: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """The first /health body that passes `check`, or the last one seen (for the assertion's message)."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body = _health(stack)
            if check(body):
                return body
        time.sleep(0.5)
    return body


def _recovered(stack: RunningStack, user: User) -> None:
    """Healthy again (every dependency ok, the credential cache trusted again), the spool written, and a
    sign-in works (auth's connection pool was not used up for good by the fault)."""
    body = _wait_for_health(
        stack,
        lambda b: b["status"] == "ok" and b.get("credential_cache") == "on" and b.get("history_spool") == 0,
        90,
    )
    assert body.get("status") == "ok", body
    assert body.get("credential_cache") == "on", body
    assert body.get("history_spool") == 0, body
    assert stack.login(user.username, user.password)


def _clear_refusal(outcome: Outcome) -> bool:
    """A 503 that says when to come back and what is unavailable."""
    detail = outcome.detail.lower()
    return (
        outcome.status == 503
        and outcome.retry_after is not None
        and int(outcome.retry_after) > 0
        and any(word in detail for word in ("unavailable", "did not answer", "cannot reach", "invalid"))
    )


def _run(
    bench: Bench,
    fault: str,
    inject: Callable[[], contextlib.AbstractContextManager[None]],
    hold_s: float,
    during: Callable[[], None] | None = None,
    window: Window | None = None,
) -> tuple[Row, Load, list[Outcome]]:
    """Load through nginx before, during and after the fault; then recovery, history and limits checked."""
    stack = bench.stack
    label = f"fault {fault.split()[0]}"
    with Load(stack, bench.users, label, client_timeout_s=CLIENT_TIMEOUT_S) as load:
        time.sleep(0.5)
        with inject():
            injected_at = time.monotonic()
            if during is not None:
                during()
            # All at once: the limit is decided atomically, whatever the order they arrive in.
            with ThreadPoolExecutor(LIMIT_TRIES) as pool:
                limited = list(
                    pool.map(lambda _: _ask(stack, bench.limited[fault], label), range(LIMIT_TRIES))
                )
            time.sleep(max(0.0, hold_s - (time.monotonic() - injected_at)))
            if window is not None:
                window.start, window.end = injected_at, time.monotonic()
        time.sleep(0.5)
    _recovered(stack, bench.users[0])

    outcomes = load.outcomes + limited
    answered = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    errors = [o for o in outcomes if o.status == 500]
    other = [o for o in outcomes if o.status not in (200, 503, 500, 429)]
    kept: dict[str, set[str]] = {}
    for outcome in answered:
        if outcome.user.username not in kept:
            kept[outcome.user.username] = titles(stack, outcome.user)
    lost = [o for o in answered if o.prompt not in kept[o.user.username]]
    row = Row(
        fault,
        len(answered),
        len(refused),
        len(errors),
        len(other),
        len(lost),
        sum(o.retried for o in outcomes),
    )
    bench.rows.append(row)

    assert not errors, [(o.status, o.detail) for o in errors[:5]]
    assert not other, [(o.status, o.detail) for o in other[:5]]
    unclear = [o for o in refused if not _clear_refusal(o)]
    assert not unclear, [(o.detail, o.retry_after) for o in unclear[:5]]
    assert not lost, [o.prompt for o in lost[:5]]
    # Limits stayed exact: never more admitted than the limit; exactly the limit when nothing failed.
    codes = sorted(o.status for o in limited)
    assert codes.count(200) <= LIMIT, codes
    if 503 not in codes:
        assert codes == [200] * LIMIT + [429] * (LIMIT_TRIES - LIMIT), codes
    return row, load, limited


def _answered_during_everything(row: Row, load: Load, limited: list[Outcome]) -> None:
    """Users with valid sessions kept getting answers: nothing was refused."""
    assert row.refused_503 == 0, [o.detail for o in load.outcomes + limited if o.status == 503][:5]
    assert row.answered > 0


# --- PostgreSQL ------------------------------------------------------------------------------------


def _healthcheck(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    """The probe compose runs in auth's container: with auth's own certificate, as mTLS requires."""
    return subprocess.run(
        [sys.executable, "-m", "genai_common.healthcheck", *args, "--mtls-env", "GENAI_AUTH_"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **environment(stack.cfg)},
    )


def test_postgres_stopped_for_30_s(bench: Bench) -> None:
    stack, postgres = bench.stack, bench.postgres
    spooled_before = stack.metrics("gateway").get(("genai_history_spooled_total", ()), 0.0)
    seen: dict[str, Any] = {}

    def during() -> None:
        body = _wait_for_health(
            stack,
            lambda b: (
                b.get("dependencies", {}).get("postgres_auth", "").startswith("down")
                and b.get("dependencies", {}).get("postgres_history", "").startswith("down")
            ),
            15,
        )
        seen["health"] = body
        with stack.client(timeout=15) as client:
            seen["login"] = client.post(
                "/token", json={"username": bench.users[0].username, "password": bench.users[0].password}
            )
            seen["history"] = client.get("/api/v1/history", headers=bench.users[0].headers)
        seen["gateway_metrics"] = stack.metrics("gateway")
        seen["auth_metrics"] = stack.metrics("auth")
        auth_target = f"127.0.0.1:{stack.cfg.ports.auth}"
        seen["probe_process"] = _healthcheck(stack, "grpc", auth_target)
        seen["probe_postgres"] = _healthcheck(stack, "grpc", auth_target, "--service", "postgres")

    @contextlib.contextmanager
    def stopped() -> Iterator[None]:
        postgres.stop()
        try:
            yield
        finally:
            postgres.start()

    row, load, limited = _run(bench, "postgres stopped 30 s", stopped, hold_s=30, during=during)

    health = seen["health"]
    assert health["status"] == "degraded", health
    assert any("PostgreSQL" in reason and "sign-in" in reason for reason in health["reasons"]), health
    login, history = seen["login"], seen["history"]
    assert login.status_code == 503 and int(login.headers["retry-after"]) > 0, login.text
    assert "PostgreSQL" in login.json()["detail"], login.text
    assert history.status_code == 503 and int(history.headers["retry-after"]) > 0, history.text
    assert "PostgreSQL" in history.json()["detail"], history.text
    gateway_metrics = seen["gateway_metrics"]
    assert gateway_metrics[("genai_gateway_dependency_up", (("dependency", "postgres_auth"),))] == 0
    assert gateway_metrics[("genai_gateway_dependency_up", (("dependency", "auth"),))] == 1
    assert seen["auth_metrics"][("genai_postgres_up", ())] == 0
    # The container probe: the process serves (healthy), its database does not (reported by name).
    assert seen["probe_process"].returncode == 0, seen["probe_process"].stderr
    assert seen["probe_postgres"].returncode == 1 and "NOT_SERVING" in seen["probe_postgres"].stderr
    _answered_during_everything(row, load, limited)
    spooled = stack.metrics("gateway").get(("genai_history_spooled_total", ()), 0.0) - spooled_before
    row.note = f"{int(spooled)} spooled, all in history after recovery"
    assert spooled > 0


def test_postgres_hung(bench: Bench) -> None:
    row, load, limited = _run(bench, "postgres hung (SIGSTOP)", bench.postgres.hung, hold_s=10)
    _answered_during_everything(row, load, limited)


def test_postgres_restarted(bench: Bench) -> None:
    @contextlib.contextmanager
    def restarted() -> Iterator[None]:
        bench.postgres.restart()
        yield

    row, load, limited = _run(bench, "postgres restarted", restarted, hold_s=3)
    _answered_during_everything(row, load, limited)


# --- the internal services -------------------------------------------------------------------------


def _killed(stack: RunningStack, name: str) -> Callable[[], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def inject() -> Iterator[None]:
        stack.procs[name].send_signal(signal.SIGKILL)
        stack.procs[name].wait(10)
        try:
            yield
        finally:
            stack.procs.pop(name)
            stack.start(name)

    return inject


def test_history_killed(bench: Bench) -> None:
    row, load, limited = _run(bench, "history killed, restarted", _killed(bench.stack, "history"), hold_s=5)
    _answered_during_everything(row, load, limited)


def test_history_hung(bench: Bench) -> None:
    row, load, limited = _run(
        bench, "history hung (SIGSTOP)", lambda: stopped_process(bench.stack, "history"), hold_s=6
    )
    _answered_during_everything(row, load, limited)


def test_auth_killed(bench: Bench) -> None:
    row, _, _ = _run(bench, "auth killed, restarted", _killed(bench.stack, "auth"), hold_s=5)
    assert row.refused_503 > 0


def test_auth_hung(bench: Bench) -> None:
    _run(bench, "auth hung (SIGSTOP)", lambda: stopped_process(bench.stack, "auth"), hold_s=6)


def test_adapter_killed(bench: Bench) -> None:
    row, _, _ = _run(bench, "adapter killed, restarted", _killed(bench.stack, "adapter"), hold_s=5)
    assert row.refused_503 > 0


def test_adapter_hung(bench: Bench) -> None:
    row, _, _ = _run(
        bench, "adapter hung (SIGSTOP)", lambda: stopped_process(bench.stack, "adapter"), hold_s=8
    )
    assert row.refused_503 > 0


# --- the model server ------------------------------------------------------------------------------


@contextlib.contextmanager
def _upstream_with(stack: RunningStack, *flags: str) -> Iterator[None]:
    """The simulator restarted with other flags for the length of the fault, then as it was."""
    original = list(stack.commands["upstream"])
    stack.stop("upstream")
    stack.commands["upstream"] = [*original, *flags]
    try:
        stack.start("upstream")
        yield
    finally:
        stack.stop("upstream")
        stack.commands["upstream"] = original
        stack.start("upstream")


def test_model_server_down(bench: Bench) -> None:
    @contextlib.contextmanager
    def down() -> Iterator[None]:
        bench.stack.stop("upstream")
        try:
            yield
        finally:
            bench.stack.start("upstream")

    row, _, _ = _run(bench, "model server down", down, hold_s=5)
    assert row.refused_503 > 0


def test_model_server_hung(bench: Bench) -> None:
    row, _, _ = _run(
        bench, "model server hung (SIGSTOP)", lambda: stopped_process(bench.stack, "upstream"), hold_s=8
    )
    assert row.refused_503 > 0


def test_model_server_slow(bench: Bench) -> None:
    window = Window()
    row, load, limited = _run(
        bench,
        "model server slow",
        lambda: _upstream_with(bench.stack, "--ttft-ms", "1500"),
        hold_s=8,
        window=window,
    )
    # Restarting the simulator with its new pace is a short outage of its own (503s, counted in the row);
    # what it answered in between, slowly, was answered, not refused.
    slow = [o for o in load.outcomes if window.start <= o.started < window.end - 3]
    assert slow and all(o.status == 200 for o in slow), [(o.status, o.detail) for o in slow]
    row.note = f"{len(slow)} asked while slow, all answered"


def test_model_server_resets_mid_stream(bench: Bench) -> None:
    stack = bench.stack
    streamed: dict[str, str] = {}

    def during() -> None:
        with stack.client(timeout=CLIENT_TIMEOUT_S) as client:
            response = client.post(
                "/ask",
                json={"prompt": f"stream {uuid.uuid4().hex}", "max_tokens": 8, "stream": True},
                headers=bench.users[0].headers,
            )
        streamed["status"], streamed["body"] = str(response.status_code), response.text

    row, _, _ = _run(
        bench,
        "model server resets mid-stream",
        lambda: _upstream_with(stack, "--error-rate", "1", "--error-kind", "reset"),
        hold_s=5,
        during=during,
    )
    assert row.refused_503 > 0
    # A stream cut by the model server ends with an error event that says so, not with a silent end.
    assert streamed["status"] == "200"
    assert '"type": "error"' in streamed["body"] or '"type":"error"' in streamed["body"], streamed["body"]
    assert "the model service is unavailable" in streamed["body"], streamed["body"]


def test_model_server_answers_garbage(bench: Bench) -> None:
    stack = bench.stack

    @contextlib.contextmanager
    def garbage() -> Iterator[None]:
        stack.stop("upstream")
        try:
            with garbage_server(stack.cfg.ports.upstream):
                yield
        finally:
            stack.start("upstream")

    row, _, _ = _run(bench, "model server answers garbage", garbage, hold_s=5)
    assert row.refused_503 > 0


# --- nginx -----------------------------------------------------------------------------------------


def test_nginx_reloaded_under_load(bench: Bench) -> None:
    @contextlib.contextmanager
    def reloads() -> Iterator[None]:
        for _ in range(3):
            bench.stack.procs["nginx"].send_signal(signal.SIGHUP)
            time.sleep(1)
        yield

    row, load, limited = _run(bench, "nginx reloaded", reloads, hold_s=4)
    _answered_during_everything(row, load, limited)
