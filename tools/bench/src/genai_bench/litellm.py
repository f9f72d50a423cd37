"""LiteLLM's proxy in front of the same simulator, for the side-by-side figures.

Installed into a virtual environment of its own (pinned in tools/bench/litellm-requirements.txt). Run
by its CLI with a master key, no database, no TLS, and no network access beyond 127.0.0.1: its remote
model-price list is replaced by the copy it ships. The caller chooses the uvicorn worker processes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from genai_bench import procs, venvs
from genai_bench.load import MODEL, Target

READY_TIMEOUT_S = 180.0

# Settings that keep LiteLLM local and quiet (no fetch of the model cost map, no telemetry).
_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
}
# What must not reach it from the caller's environment: it would switch on a database or a provider.
_DROP = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL", "LITELLM_MASTER_KEY")


def config_text(sim_port: int, master_key: str) -> str:
    """The proxy's config: one model, the simulator, called as an OpenAI-compatible server."""
    # JSON is valid YAML, and needs no YAML writer here.
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://127.0.0.1:{sim_port}/v1",
                    "api_key": "unused",
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    return json.dumps(config, indent=2) + "\n"


@dataclass
class LiteLLM:
    proc: subprocess.Popen[bytes]
    port: int
    master_key: str
    version: str
    log: Path

    @property
    def target(self) -> Target:
        return Target(
            "litellm",
            f"http://127.0.0.1:{self.port}/v1",
            headers={"Authorization": f"Bearer {self.master_key}"},
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/health/liveliness"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LiteLLM exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"LiteLLM not ready within {timeout_s:.0f} s; see {self.log}")

    def wait_quiet(self, timeout_s: float = READY_TIMEOUT_S, busy_share: float = 0.05) -> None:
        """Until its processes stop using CPU: with several workers, the first one answers while the others
        are still importing (seconds of CPU each), which would slow down the first measurements."""
        deadline = time.monotonic() + timeout_s
        last = sum(procs.cpu_seconds(p) for p in procs.tree(self.proc.pid))
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = sum(procs.cpu_seconds(p) for p in procs.tree(self.proc.pid))
            if now - last < busy_share:
                return
            last = now

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own process group: uvicorn workers go with it.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start(work_dir: Path, sim_port: int, port: int, workers: int = 1) -> LiteLLM:
    """Install on first use, write the config, start the proxy (not yet ready: see `wait_ready`)."""
    exe = venvs.ensure(work_dir / "litellm-venv", venvs.requirements("litellm-requirements.txt"), "litellm")
    python = exe.parent / "python"
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    master_key = "sk-bench-" + secrets.token_urlsafe(16)
    config = work_dir / "litellm-config.yaml"
    config.write_text(config_text(sim_port, master_key))
    env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("GENAI_")}
    env.update(_ENV)
    log = work_dir / "litellm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(exe),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                str(workers),
            ],
            env=env,
            cwd=work_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LiteLLM(proc, port, master_key, version, log)
