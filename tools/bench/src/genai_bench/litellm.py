"""LiteLLM's proxy in front of the same simulator, for the side-by-side figures, in two configurations.

Installed into a virtual environment of its own (pinned in tools/bench/litellm-requirements.txt). Run
by its CLI with no TLS and no network access beyond 127.0.0.1: its remote model-price list is replaced
by the copy it ships. The caller chooses the uvicorn worker processes.

- the baseline: a master key, no database, no Redis: LiteLLM at its lightest;
- feature-matched: what our path does on every request too: a per-key check of an API key with request,
  token and concurrency limits counted in Redis (LiteLLM's own rate limiter, shared by its workers
  through Redis, as are its router's counts) and answers cached in Redis (LiteLLM's response cache). Its
  keys come from a file (litellm_keys.py says why not from PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from genai_bench import procs, venvs
from genai_bench.load import MODEL, Target

READY_TIMEOUT_S = 180.0
# Limits of the feature-matched key: counted on every request, never reached by the bench (whose user on
# our path has its limits lifted too), so that the figures show what counting costs, not throttling.
KEY_LIMITS = {"rpm_limit": 10_000_000, "tpm_limit": 1_000_000_000, "max_parallel_requests": 100_000}
# How long LiteLLM keeps a cached answer in Redis (seconds).
CACHE_TTL_S = 3600

# Settings that keep LiteLLM local and quiet (no fetch of the model cost map, no telemetry).
_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
}
# What must not reach it from the caller's environment: it would switch on a database or a provider.
_DROP = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST", "OPENAI_API_KEY", "OPENAI_BASE_URL", "LITELLM_MASTER_KEY")


@dataclass(frozen=True)
class Redis:
    host: str
    port: int


def config_text(sim_port: int, master_key: str, redis: Redis | None = None) -> str:
    """The proxy's config: one model, the simulator, called as an OpenAI-compatible server; with `redis`,
    the feature-matched configuration (keys checked by litellm_keys.py, limits and cache in Redis)."""
    # JSON is valid YAML, and needs no YAML writer here.
    config: dict[str, Any] = {
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
    if redis is not None:
        config["general_settings"]["custom_auth"] = "litellm_keys.user_api_key_auth"
        # The response cache's Redis is also the one LiteLLM's rate limiter counts in.
        config["litellm_settings"].update(
            cache=True,
            cache_params={"type": "redis", "host": redis.host, "port": redis.port, "ttl": CACHE_TTL_S},
        )
        # The router's own usage counts, shared by the workers as LiteLLM advises for several instances.
        config["router_settings"] = {"redis_host": redis.host, "redis_port": redis.port}
    return json.dumps(config, indent=2) + "\n"


@dataclass
class LiteLLM:
    proc: subprocess.Popen[bytes]
    port: int
    # The key the load uses: the master key (baseline) or a key of the feature-matched configuration.
    api_key: str
    version: str
    log: Path
    name: str = "litellm"

    @property
    def target(self) -> Target:
        return Target(
            self.name,
            f"http://127.0.0.1:{self.port}/v1",
            headers={"Authorization": f"Bearer {self.api_key}"},
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


def start(
    work_dir: Path,
    sim_port: int,
    port: int,
    workers: int = 1,
    *,
    name: str = "litellm",
    redis: Redis | None = None,
) -> LiteLLM:
    """Install on first use, write the config, start the proxy (not yet ready: see `wait_ready`).

    Without `redis` the baseline, in `work_dir` (litellm-config.yaml, litellm.log); with it the
    feature-matched configuration, in `work_dir`/`name`/ and `work_dir`/`name`.log.
    """
    exe = venvs.ensure(work_dir / "litellm-venv", venvs.requirements("litellm-requirements.txt"), "litellm")
    python = exe.parent / "python"
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    master_key = "sk-bench-" + secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if k not in _DROP and not k.startswith("GENAI_")}
    env.update(_ENV)
    api_key = master_key
    if redis is None:
        config_dir = work_dir
        config = work_dir / "litellm-config.yaml"
    else:
        config_dir = work_dir / name
        config_dir.mkdir(parents=True, exist_ok=True)
        config = config_dir / "config.yaml"
        # LiteLLM loads the custom_auth module from beside its config.
        shutil.copyfile(Path(__file__).with_name("litellm_keys.py"), config_dir / "litellm_keys.py")
        api_key = "sk-bench-key-" + secrets.token_urlsafe(16)
        keys = {
            hashlib.sha256(api_key.encode()).hexdigest(): {"key_alias": "bench", **KEY_LIMITS},
        }
        keys_file = config_dir / "keys.json"
        keys_file.write_text(json.dumps(keys, indent=2) + "\n")
        keys_file.chmod(0o600)
        env["BENCH_LITELLM_KEYS"] = str(keys_file)
    config.write_text(config_text(sim_port, master_key, redis))
    log = work_dir / f"{name}.log"
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
            cwd=config_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return LiteLLM(proc, port, api_key, version, log, name)
