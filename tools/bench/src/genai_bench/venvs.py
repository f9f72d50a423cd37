"""Virtual environments of the bench's own (LiteLLM, py-spy), made on first use, apart from the project's.

Each is rebuilt only when its pinned requirements file changes; pip's output goes to a log beside it.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

BENCH_ROOT = Path(__file__).resolve().parents[2]


def requirements(name: str) -> Path:
    """A pinned requirements file shipped beside the package (tools/bench/NAME)."""
    return BENCH_ROOT / name


def ensure(venv: Path, requirements_file: Path, binary: str) -> Path:
    """The path of `binary` in `venv`, after creating the venv and installing the requirements if needed."""
    stamp = venv / ".bench-requirements"
    wanted = hashlib.sha256(requirements_file.read_bytes()).hexdigest()
    exe = venv / "bin" / binary
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return exe
    log = venv.parent / f"{venv.name}-install.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing {requirements_file.name} into {venv} (first use; log: {log}) ...", flush=True)
    with open(log, "w") as out:
        steps = [
            ["python3", "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "-q", "-U", "pip"],
            [str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements_file)],
        ]
        if (venv / "bin" / "python").exists():
            steps = steps[1:]
        for step in steps:
            result = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False, timeout=1800)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed (exit {result.returncode}); see {log}")
    if not exe.exists():
        raise RuntimeError(f"{binary} is not in {venv} after installing {requirements_file}; see {log}")
    stamp.write_text(wanted + "\n")
    return exe
