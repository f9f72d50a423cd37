"""`python -m genai_vllmsim` / `genai-vllm-sim`: run the simulator under uvicorn (uvloop, httptools)."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Sequence

import uvicorn

from genai_vllmsim.app import ABANDONED_RESPONSE_LOG, create_app
from genai_vllmsim.config import parse_args

READY_PREFIX = "genai-vllm-sim listening on "


class _HideSimulatedResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != ABANDONED_RESPONSE_LOG


class _JsonLines(logging.Formatter):
    """The simulator's own log lines (one per request, with the caller's request id) as JSON, as the
    services write theirs."""

    _RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": "vllm-sim",
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in self._RESERVED and v != "")
        return json.dumps(entry, default=str)


def _log_requests(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonLines())
    sim_logger = logging.getLogger("genai_vllmsim")
    sim_logger.addHandler(handler)
    sim_logger.propagate = False
    # At the default level ("warning") requests are not logged; "info" logs each one with its request id.
    sim_logger.setLevel(logging.DEBUG if level == "trace" else level.upper())


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before the ready line is printed lets clients connect at once (queued in the backlog).
    sock.listen(backlog)
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    config, options = parse_args(argv)
    backlog = 4096
    try:
        sock = _bind(options.host, options.port, backlog)
    except OSError as exc:
        sys.exit(f"genai-vllm-sim: cannot listen on {options.host}:{options.port}: {exc}")
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            loop="uvloop",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_level=options.log_level,
            backlog=backlog,
            timeout_graceful_shutdown=2,
        )
    )
    logging.getLogger("uvicorn.error").addFilter(_HideSimulatedResets())
    _log_requests(options.log_level)
    host = f"[{options.host}]" if ":" in options.host else options.host
    # Machine-readable: the launcher reads the port from this line (useful with --port 0).
    print(f"{READY_PREFIX}http://{host}:{port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
