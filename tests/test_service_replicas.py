"""Two processes each of auth and history behind one gateway (issue 13): under steady load through nginx, one
history process dies, then one auth process. Each first hangs for a moment (SIGSTOP), as a process does
that thrashes before the OOM killer takes it, so that calls are in flight on it when it is killed (SIGKILL):
a quick call on a healthy replica is rarely caught by a sudden kill, and this test is about those calls. The gateway's
channels balance over both and send again, to the survivor, the calls that were in flight on the dead one
(genai_common.grpc_client: round robin, retries of idempotent methods; the journal's AppendExchanges
batches carry exchange ids, so a repeat is stored once).

Asserted: no request fails, every answered question is in history (counted in PostgreSQL) and none went
through the spool, both replicas took calls before the kill and the survivor every sign-in after it, and
batches of exchanges (each process's own /metrics). Figures are printed (-s); nothing is asserted on time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from genai_devstack import databases, infra
from tests.harness import RunningStack, User, launch, wait_for

pytestmark = pytest.mark.slow

# Load per phase: workers asking questions (each stored in history), workers signing in (auth's Login), each
# of these pausing LOGIN_PAUSE_S between sign-ins: nginx lets one address sign in 10 times a second.
ASK_WORKERS = 6
LOGIN_WORKERS = 2
LOGIN_PAUSE_S = 0.3
PHASE_S = 8.0
KILL_AT_S = 3.0
# How long the doomed replica hangs before it is killed: within the gateway's deadlines for auth and
# history (3 s), so that the calls caught there fail by the kill, not by their deadline.
HANG_S = 1.0


@pytest.fixture(scope="module")
def replicated(work_dir: Path, postgres_server: infra.Service, redis_url: str) -> Iterator[RunningStack]:
    database = databases.create_database(postgres_server.url)
    try:
        running = launch(
            work_dir,
            database,
            # A Redis database of its own: the history spool must be this stack's alone.
            redis_url.rsplit("/", 1)[0] + "/7",
            upstream="sim",
            upstream_args=["--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "4"],
            name="replica-stack",
            overrides={
                # Every question goes to the model and into history: no cached or similar answers,
                # no per-user request limit in the way of the load.
                "GENAI_GATEWAY_CACHE_ENABLED": "false",
                "GENAI_GATEWAY_SIMILAR_ENABLED": "false",
                "GENAI_GATEWAY_LIMITS_USER__REQUESTS_PER_MINUTE": "-1",
            },
            replicas={"auth": 2, "history": 2},
        )
        try:
            yield running
        finally:
            running.stop_all()
    finally:
        databases.drop_database(postgres_server.url, database.rsplit("/", 1)[1].split("?")[0])


@dataclass
class Load:
    """What the workers did: answers by kind and status (0: no response), and when each successful question
    and sign-in started."""

    statuses: Counter[str] = field(default_factory=Counter)
    asked_at: list[float] = field(default_factory=list)
    logged_in_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if not status.endswith(" 200"))


async def _ask_worker(client: httpx.AsyncClient, user: User, load: Load, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        started = time.monotonic()
        try:
            response = await client.post(
                "/ask", json={"prompt": f"replica check {user.username} {n}"}, headers=user.headers
            )
            status = response.status_code
        except httpx.HTTPError as exc:
            status, response = 0, None
            load.errors.append(repr(exc))
        load.statuses[f"ask {status}"] += 1
        if status == 200:
            load.asked_at.append(started)
        elif response is not None:
            load.errors.append(response.text[:200])


async def _login_worker(client: httpx.AsyncClient, user: User, load: Load, stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await client.post(
                "/token", json={"username": user.username, "password": user.password}
            )
            status = response.status_code
            # The new token checked at once: the gateway asks auth who it is (its cache has never seen it).
            if status == 200:
                token = response.json()["access_token"]
                check = await client.get(
                    "/api/v1/history?limit=1", headers={"Authorization": f"Bearer {token}"}
                )
                load.statuses[f"token check {check.status_code}"] += 1
        except httpx.HTTPError as exc:
            status = 0
            load.errors.append(repr(exc))
        load.statuses[f"login {status}"] += 1
        if status == 200:
            load.logged_in_at.append(started)
        await asyncio.sleep(LOGIN_PAUSE_S)


def _handled(stack: RunningStack, name: str, method: str) -> float:
    """The calls of `method` a process answered OK so far, from its own /metrics."""
    return stack.metrics(name).get(
        ("genai_grpc_server_handled_total", (("code", "OK"), ("method", method))), 0.0
    )


def _hang_then_kill(stack: RunningStack, name: str) -> None:
    proc = stack.procs.pop(name)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(HANG_S)
    proc.kill()
    proc.wait(10)


@dataclass
class Phase:
    victim: str
    survivor: str
    method: str
    load: Load = field(default_factory=Load)
    # Calls of `method` each process had answered: at the phase's start, at the kill, at its end.
    victim_start: float = 0.0
    victim_at_kill: float = 0.0
    survivor_start: float = 0.0
    survivor_at_kill: float = 0.0
    survivor_end: float = 0.0
    # When the victim stopped answering (it hangs, then is killed).
    killed_at: float = 0.0

    def figures(self) -> dict[str, float]:
        return {
            f"{self.victim} before the kill": self.victim_at_kill - self.victim_start,
            f"{self.survivor} before the kill": self.survivor_at_kill - self.survivor_start,
            f"{self.survivor} after the kill": self.survivor_end - self.survivor_at_kill,
        }


async def _run_phase(stack: RunningStack, users: list[User], phase: Phase) -> None:
    stop = asyncio.Event()
    async with stack.async_client(timeout=30) as client:
        workers = [
            *(_ask_worker(client, users[i % len(users)], phase.load, stop) for i in range(ASK_WORKERS)),
            *(_login_worker(client, users[i % len(users)], phase.load, stop) for i in range(LOGIN_WORKERS)),
        ]
        tasks = [asyncio.ensure_future(worker) for worker in workers]
        await asyncio.sleep(KILL_AT_S)
        phase.victim_at_kill = await asyncio.to_thread(_handled, stack, phase.victim, phase.method)
        phase.survivor_at_kill = await asyncio.to_thread(_handled, stack, phase.survivor, phase.method)
        phase.killed_at = time.monotonic()
        await asyncio.to_thread(_hang_then_kill, stack, phase.victim)
        await asyncio.sleep(PHASE_S - KILL_AT_S)
        stop.set()
        await asyncio.gather(*tasks)
    phase.survivor_end = await asyncio.to_thread(_handled, stack, phase.survivor, phase.method)


async def _stored_exchanges(stack: RunningStack, users: list[User]) -> int:
    conn = await asyncpg.connect(stack.cfg.service_database_urls["history"])
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM messages WHERE owner_id = ANY($1::uuid[])", [u.id for u in users]
            )
        )
    finally:
        await conn.close()


def test_killing_a_history_then_an_auth_replica_fails_nothing_and_loses_nothing(
    replicated: RunningStack,
) -> None:
    stack = replicated
    users = [stack.new_user() for _ in range(3)]
    phases = [
        Phase(victim="history-2", survivor="history", method="AppendExchanges"),
        Phase(victim="auth-2", survivor="auth", method="Login"),
    ]
    for phase in phases:
        phase.victim_start = _handled(stack, phase.victim, phase.method)
        phase.survivor_start = _handled(stack, phase.survivor, phase.method)
        asyncio.run(_run_phase(stack, users, phase))

    answered = sum(len(phase.load.asked_at) for phase in phases)
    spooled = stack.metrics("gateway").get(("genai_history_spooled_total", ()), 0.0)
    # An answer is journaled before it is given, and the gateways write the journal in batches (spooled, a
    # write that failed, is asserted below not to have happened): the wait covers the last batches.
    wait_for(lambda: asyncio.run(_stored_exchanges(stack, users)) >= answered, 10, "every exchange stored")
    stored = asyncio.run(_stored_exchanges(stack, users))

    print(f"\nexchanges answered {answered}, stored in history {stored}, spooled {spooled:.0f}")
    for phase in phases:
        load = phase.load
        after_kill = {
            "ask": sum(1 for t in load.asked_at if t > phase.killed_at),
            "login": sum(1 for t in load.logged_in_at if t > phase.killed_at),
        }
        figures = phase.figures()
        print(
            f"killed {phase.victim}: requests {dict(sorted(load.statuses.items()))}, failed {load.failed}; "
            f"{phase.method} calls answered by {', '.join(f'{k} {v:.0f}' for k, v in figures.items())}; "
            f"requests started after the kill {after_kill}"
        )
        assert load.failed == 0, (load.statuses, load.errors[:5])
        assert load.asked_at and load.logged_in_at
        # Both replicas took calls while both were up; the survivor took every one after the kill.
        victim_before, survivor_before, survivor_after = figures.values()
        assert victim_before > 0 and survivor_before > 0
        if phase.method == "Login":
            assert after_kill["login"] > 0 and survivor_after >= after_kill["login"]
        else:
            # The journal's batches: each carries the exchanges of many requests.
            assert after_kill["ask"] > 0 and survivor_after > 0
    assert stored == answered
    assert spooled == 0
