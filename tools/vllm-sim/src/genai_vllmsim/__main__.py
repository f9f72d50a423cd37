"""`python -m genai_vllmsim` / `genai-vllm-sim`: run the simulator under uvicorn (uvloop, httptools)."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Sequence

import uvicorn

from genai_vllmsim.app import ABANDONED_RESPONSE_LOG, create_app
from genai_vllmsim.config import parse_args

READY_PREFIX = "genai-vllm-sim listening on "


class _HideSimulatedResets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != ABANDONED_RESPONSE_LOG


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
    host = f"[{options.host}]" if ":" in options.host else options.host
    # Machine-readable: the launcher reads the port from this line (useful with --port 0).
    print(f"{READY_PREFIX}http://{host}:{port}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
