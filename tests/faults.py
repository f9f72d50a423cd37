"""What the fault-injection suite (tests/test_faults.py) needs beside the stack: a PostgreSQL of its own to
stop, hang and restart, a model server that answers garbage, and load through nginx that records every
answer it got."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from genai_devstack import infra
from tests.harness import RunningStack, User

# --- PostgreSQL -------------------------------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL server of the suite's own, in a temporary folder on a free port: never the machine's
    shared one, which other tests and people use."""

    def __init__(self) -> None:
        # A folder of its own (not inside the test run's private one): as root, PostgreSQL runs as the
        # postgres user, which must be able to reach it.
        self._root = Path(tempfile.mkdtemp(prefix="genai-faults-postgres-"))
        self.data_dir = self._root / "pgdata"
        self.port = infra.free_port()
        self._service = infra.start_local_postgres(self.data_dir, self.port)
        self.url = self._service.url

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, new connections refused."""
        self._service.stop()

    def start(self) -> None:
        """Again, on the same port and data."""
        self._service = infra.start_local_postgres(self.data_dir, self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The postmaster first, then its children (the sessions and background workers)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                # Field 4 of /proc/<pid>/stat is the parent; the name before it may hold spaces.
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """Every process of the server stopped (SIGSTOP): connections stay open and nothing answers.
        Always continued (SIGCONT) on the way out, also when the test fails."""
        pids = self.pids()
        stopped: list[int] = []
        try:
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            yield
        finally:
            for pid in reversed(stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for pid in self.pids():
                os.kill(pid, signal.SIGCONT)
        self._service.stop()
        shutil.rmtree(self._root, ignore_errors=True)


@contextlib.contextmanager
def stopped_process(stack: RunningStack, name: str) -> Iterator[None]:
    """A process of the stack hung with SIGSTOP (its sockets stay open), continued on the way out."""
    pid = stack.procs[name].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# --- a model server that answers garbage ------------------------------------------------------------


class _Garbage(http.server.BaseHTTPRequestHandler):
    """200 for everything, with a body that is no OpenAI answer: half the time not JSON at all."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b"<html>not a model</html>" if uuid.uuid4().int % 2 else b'{"garbage": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def garbage_server(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


# --- load -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    user: User
    prompt: str
    status: int  # 0: no HTTP answer at all (a hang past the client's timeout, a dropped connection)
    detail: str = ""
    retry_after: str | None = None
    # When the request was sent (monotonic clock).
    started: float = field(default_factory=time.monotonic)
    # Sent again on a new connection after the first one was closed before it was read (see `post`).
    retried: bool = False


def post(client: httpx.Client, outcome: Outcome, body: dict[str, object]) -> None:
    """POST /ask and record the answer in `outcome`.

    A keep-alive connection that nginx closes as the request goes out (a reload ends idle connections)
    ends with no response at all: the request was never read, so, as browsers and the openai SDK do, it is
    sent once more on a new connection. Anything else without an answer stays status 0.
    """
    for attempt in (1, 2):
        try:
            response = client.post("/ask", json=body, headers=outcome.user.headers)
        except httpx.RemoteProtocolError as exc:
            if attempt == 1 and "without sending a response" in str(exc):
                outcome.retried = True
                continue
            outcome.detail = repr(exc)
            return
        except httpx.HTTPError as exc:
            outcome.detail = repr(exc)
            return
        outcome.status = response.status_code
        outcome.retry_after = response.headers.get("retry-after")
        if response.status_code != 200:
            with contextlib.suppress(ValueError):
                outcome.detail = str(response.json().get("detail", ""))
        return


@dataclass
class Load:
    """Questions through nginx from several users at once, each answer recorded, until stopped."""

    stack: RunningStack
    users: list[User]
    label: str
    pause_s: float = 0.05
    # Far beyond every deadline of the stack: a request still unanswered then has hung.
    client_timeout_s: float = 40.0
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, user: User) -> None:
        with self.stack.client(timeout=self.client_timeout_s) as client:
            while not self._stop.is_set():
                prompt = f"{self.label} {uuid.uuid4().hex[:12]}"
                outcome = Outcome(user, prompt, 0)
                post(client, outcome, {"prompt": prompt, "max_tokens": 8})
                with self._lock:
                    self.outcomes.append(outcome)
                time.sleep(self.pause_s)

    def __enter__(self) -> Load:
        for user in self.users:
            thread = threading.Thread(target=self._run, args=(user,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.client_timeout_s + 5)

    def with_status(self, status: int) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


def titles(stack: RunningStack, user: User) -> set[str]:
    """Every conversation title of the user (a conversation started by /ask is titled by its prompt)."""
    found: set[str] = set()
    cursor = ""
    with stack.client() as client:
        while True:
            page = client.get(
                "/api/v1/history", params={"limit": 100, "cursor": cursor}, headers=user.headers
            )
            page.raise_for_status()
            body = page.json()
            found.update(c["title"] for c in body["conversations"])
            cursor = body.get("next_cursor") or ""
            if not cursor:
                return found
