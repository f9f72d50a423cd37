"""The air-gapped install of docs/red-os.md, as far as it runs on this machine.

On the "connected machine" (a dockerd on the engine root that tests/test_compose_stack.py builds the
project's images into, reused as they are; missing ones are built), `deploy/bundle.sh create` gathers
the CPU profile's images, llama.cpp's GGUF and a small Hugging Face model folder into one directory with
a manifest and SHA-256 checksums. On the "air-gapped host" (a second dockerd started with an empty data
root), `deploy/bundle.sh verify-and-load` checks and loads it and installs deploy/ and docs/ from it;
`deploy/preflight.sh` is run there (every check reported: ok, failed with advice, or skipped with a
reason; a broken .env and a missing secret are caught); and the backup and restore commands of
docs/operations.md are read out of the guide and run as written, against the stack started from the
loaded images. Both engines are stopped and the host's data root removed at the end, also on failure.

Measured figures (the bundle's size per part, how long creating, verifying and loading took) and the
preflight's output are written to test-artifacts/offline-bundle/, never asserted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from tests import test_compose_stack as stack
from tests.test_compose_stack import engine_lock  # noqa: F401  (one engine on the data root at a time)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
OPERATIONS = ROOT / "docs" / "operations.md"
ARTIFACTS = ROOT / "test-artifacts" / "offline-bundle"
# The dump name the guide's commands use as an example; the test puts the newest real dump in its place.
EXAMPLE_DUMP = "genai-20261122T023000Z.dump"
BASE_IMAGES = ("python:3.12-slim", "nginx:1.28", "redis:7.4", "postgres:16")
STATUSES = {"ok", "FAIL", "WARN", "skip"}

pytestmark = pytest.mark.slow

REPORT: list[str] = []


def note(line: str) -> None:
    REPORT.append(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.txt").write_text("\n".join(REPORT) + "\n")


def run(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def dockerd_using(data_root: Path) -> int | None:
    """The pid of a dockerd already running on this data root (two engines on one root corrupt it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and Path(argv[0]).name == "dockerd":
            for i, arg in enumerate(argv):
                value = argv[i + 1] if arg == "--data-root" and i + 1 < len(argv) else None
                if arg.startswith("--data-root="):
                    value = arg.split("=", 1)[1]
                if value and Path(value) == data_root:
                    return int(entry.name)
    return None


def start_engine(run_dir: Path, data_root: Path) -> stack.Engine:
    """tests/test_compose_stack.py's dockerd, on the given data root (its own bridge: one engine at a
    time, which the lock on the shared data root, held for this whole module, makes sure of)."""
    engine = stack.Engine(run_dir)
    with mock.patch.object(stack, "ENGINE_ROOT", data_root):
        engine.start()
    return engine


def require_engine() -> None:
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root; no container engine can be started as this user")
    installed = subprocess.run(
        [str(stack.HERE / "install-engine.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if installed.returncode == 3:
        pytest.skip(f"no container engine can be installed here: {installed.stderr.strip()}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    other = dockerd_using(stack.ENGINE_ROOT)
    if other is not None:
        pytest.skip(f"another dockerd (pid {other}) is using {stack.ENGINE_ROOT}, where the images are")


def make_model(folder: Path) -> Path:
    """A stand-in for `hf download ORG/NAME --local-dir DIR`: the files vLLM reads, small."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}\n')
    (folder / "generation_config.json").write_text('{"max_new_tokens": 64}\n')
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"}}\n')
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 2048}\n')
    (folder / "model.safetensors").write_bytes(os.urandom(1 << 20))
    # huggingface_hub's download cache, which is not part of the model.
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "download.lock").write_text("")
    return folder


def manifest(bundle: Path) -> list[list[str]]:
    return [
        line.split() for line in (bundle / "MANIFEST").read_text().splitlines() if not line.startswith("#")
    ]


def compose_images(profile: str) -> set[str]:
    """The images deploy/docker-compose.yml names for a profile (placeholders for the required secrets)."""
    env = dict(os.environ)
    for name in stack.SECRETS:
        env[name] = "listing-only"
    out = run(
        [
            "docker",
            "compose",
            "-f",
            str(DEPLOY / "docker-compose.yml"),
            "--profile",
            profile,
            "config",
            "--images",
        ],
        env=env,
    ).stdout
    return set(out.split())


def preflight_lines(output: str) -> dict[str, tuple[str, str, str]]:
    """check name -> (status, detail, advice), every check line checked for its shape."""
    checks: dict[str, tuple[str, str, str]] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        # printf '%-4s  %-22s %s': the status, the check's name (may hold spaces), what was found.
        match = re.match(r"^(ok  |FAIL|WARN|skip)  (.{22}) (\S.*)$", line)
        if not match:
            continue
        status, name, detail = (group.strip() for group in match.groups())
        advice = ""
        if status in ("FAIL", "WARN"):
            follow = lines[i + 1] if i + 1 < len(lines) else ""
            assert re.match(r"^ +-> \S", follow), f"{name}: {status} without advice"
            advice = follow.split("->", 1)[1].strip()
        checks[name] = (status, detail, advice)
    summary = re.search(r"^preflight: (\d+) checks: (\d+) ok, (\d+) failed, (\d+) warnings, (\d+) skipped$",
                        output, flags=re.M)  # fmt: skip
    assert summary, output
    assert int(summary.group(1)) == len(checks), output
    return checks


EVERY_CHECK = {
    ".env", "secrets", "engine", "compose", "compose file", "images", "container_use_devices",
    "disk: images", "disk: backups", "model", "nvidia-smi", "gpu in a container", "time sync", "ports",
    "firewall", "certificate",
}  # fmt: skip


def test_preflight_catches_a_broken_env_and_a_missing_secret(tmp_path: Path) -> None:
    """Needs no engine: the .env checks and compose's own reading of the file run without one."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path / 'no-engine.sock'}")
    good = stack.write_env(tmp_path, stack._free_port(), stack._free_port()).read_text()

    def preflight(env_file: Path) -> subprocess.CompletedProcess[str]:
        return run(
            [str(DEPLOY / "preflight.sh"), "--env-file", str(env_file), "--name", "localhost"],
            env=env,
            check=False,
        )

    broken = tmp_path / "broken.env"
    broken.write_text(good.replace("\nREDIS_PASSWORD=", "\nREDIS_PASSWORD : ", 1))
    broken.chmod(0o600)
    checks = preflight_lines(preflight(broken).stdout)
    status, detail, advice = checks[".env"]
    line = good[: good.index("\nREDIS_PASSWORD=")].count("\n") + 2
    assert status == "FAIL" and f"line {line}" in detail and "NAME=value" in advice, checks[".env"]

    missing = tmp_path / "missing.env"
    missing.write_text(re.sub(r"^REDIS_PASSWORD=.*\n", "", good, flags=re.M))
    missing.chmod(0o600)
    result = preflight(missing)
    checks = preflight_lines(result.stdout)
    assert result.returncode == 1
    assert checks["secrets"][0] == "FAIL" and "REDIS_PASSWORD is missing" in checks["secrets"][1]
    assert "openssl rand -hex 32" in checks["secrets"][2]
    assert checks["compose file"][0] == "FAIL" and "REDIS_PASSWORD" in checks["compose file"][1]
    # No engine: said so, with what to do, and the checks that need one skipped with that reason.
    assert checks["engine"][0] == "FAIL" and checks["engine"][2], checks["engine"]
    assert checks["images"][0] == "skip" and checks["disk: images"][0] == "skip"

    weak = tmp_path / "weak.env"
    weak.write_text(re.sub(r"^GENAI_AUTH_JWT_SECRET=.*$", "GENAI_AUTH_JWT_SECRET=changeme", good, flags=re.M))
    weak.chmod(0o644)
    weak_result = preflight(weak)
    checks = preflight_lines(weak_result.stdout)
    assert checks["secrets"][0] == "FAIL" and "GENAI_AUTH_JWT_SECRET is 8 characters" in checks["secrets"][1]
    assert checks[".env"][0] == "WARN" and "chmod 600" in checks[".env"][2]
    # Secrets are never printed.
    for value in re.findall(
        r"^(?:POSTGRES_PASSWORD|GENAI_AUTH_JWT_SECRET|GENAI_UPSTREAM_API_KEY)=(.+)$", good, re.M
    ):
        assert value not in result.stdout + result.stderr + weak_result.stdout + weak_result.stderr


# --- the connected machine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # The compose test's lock on the shared data root, held until this module's engines are stopped.
    request.getfixturevalue("engine_lock")
    require_engine()
    out = tmp_path_factory.mktemp("bundle") / "genai-bundle"
    model = make_model(tmp_path_factory.mktemp("model") / "tiny-instruct")
    engine = stack.Engine(tmp_path_factory.mktemp("dockerd", numbered=True))
    try:
        engine.start()
        images = compose_images("cpu") | set(BASE_IMAGES)
        missing = [i for i in images if engine.docker("image", "inspect", i, check=False).returncode]
        if missing:
            # Built once (and kept in the engine root); later runs reuse them, as the compose test does.
            note(f"images missing before the bundle, built now: {' '.join(sorted(missing))}")
            made = run([str(stack.HERE / "stand-in-images.sh")], env=engine.env, timeout=1800, check=False)
            assert made.returncode == 0, made.stderr[-4000:]
        started = time.monotonic()
        created = run(
            [str(DEPLOY / "bundle.sh"), "create", "--profile", "cpu", "--model", str(model), str(out)],
            env=engine.env,
            timeout=3600,
        )
        note(f"bundle.sh create: {time.monotonic() - started:.0f} s")
        note(created.stdout.strip())
    finally:
        engine.stop()
        assert engine.process is None or engine.process.poll() is not None, "dockerd still running"
    try:
        yield out
    finally:
        # Gigabytes: not left for pytest's kept temporary folders.
        shutil.rmtree(out.parent, ignore_errors=True)


def test_bundle_holds_every_image_model_and_file_with_checksums(bundle: Path) -> None:
    entries = manifest(bundle)
    images = {e[1]: e[3] for e in entries if e[0] == "image"}
    assert set(images) == compose_images("cpu"), images
    assert next(e for e in entries if e[0] == "profiles")[1:] == ["cpu"]
    for file in images.values():
        assert (bundle / file).stat().st_size > 0, file
    # The GGUF llama.cpp serves, copied out of its image: a real GGUF file.
    gguf = bundle / "models" / "smollm2-135m-instruct.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    # The vLLM model folder, without huggingface_hub's cache.
    model = bundle / "models" / "tiny-instruct"
    assert {p.name for p in model.iterdir()} == {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    }
    # deploy/ and docs/ as committed: the scripts the host runs, never a local .env or certificate.
    for path in ("deploy/docker-compose.yml", "deploy/.env.example", "deploy/preflight.sh",
                 "deploy/bundle.sh", "deploy/fetch-rpms.sh", "deploy/backup/backup.sh",
                 "deploy/nginx/make-selfsigned-cert.sh", "docs/red-os.md", "docs/operations.md"):  # fmt: skip
        assert (bundle / "genai" / path).is_file(), path
    assert not (bundle / "genai" / "deploy" / ".env").exists()
    assert not (bundle / "genai" / "deploy" / "tls").exists()

    # Every file but SHA256SUMS itself is listed, with the right digest (sha256sum -c, as on the host).
    listed = {line.split("  ", 1)[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()}
    present = {f"./{p.relative_to(bundle)}" for p in bundle.rglob("*") if p.is_file()}
    assert listed == present - {"./SHA256SUMS"}
    # (Each digest is checked by verify-and-load below, as on the host.)

    sizes = {"total": bundle}
    sizes.update({part: bundle / part for part in ("images", "models", "genai")})
    for part, path in sizes.items():
        du = run(["du", "-sb", str(path)], env=dict(os.environ)).stdout.split()[0]
        note(f"bundle size, {part}: {int(du) / 1e6:.1f} MB")
    for name, file in sorted(images.items()):
        note(f"  {name}: {(bundle / file).stat().st_size / 1e6:.0f} MB")


def test_verify_refuses_a_changed_missing_or_extra_file(bundle: Path, tmp_path: Path) -> None:
    """On a copy of the bundle's small files with their own lines of SHA256SUMS (the images' digests are
    checked whole by verify-and-load below): refused, naming the file."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle / "genai", copy / "genai")
    (copy / "MANIFEST").write_text(
        "".join(line for line in (bundle / "MANIFEST").open() if not line.startswith("image"))
    )
    lines = [line for line in (bundle / "SHA256SUMS").open() if "  ./genai/" in line]
    manifest_sum = run(["sha256sum", "./MANIFEST"], env=dict(os.environ), cwd=copy).stdout
    (copy / "SHA256SUMS").write_text(manifest_sum + "".join(lines))
    env = dict(os.environ)
    verify = [str(DEPLOY / "bundle.sh"), "verify", str(copy)]
    assert run(verify, env=env).returncode == 0

    guide = copy / "genai" / "docs" / "red-os.md"
    original = guide.read_bytes()
    guide.unlink()
    refused = run(verify, env=env, check=False)
    assert refused.returncode != 0 and "files missing: ./genai/docs/red-os.md" in refused.stderr
    guide.write_bytes(original + b"\n")
    refused = run(verify, env=env, check=False)
    assert refused.returncode != 0
    assert "./genai/docs/red-os.md: FAILED" in refused.stdout, refused.stdout + refused.stderr
    assert "checksums do not match" in refused.stderr
    guide.write_bytes(original)

    extra = copy / "genai" / "deploy" / "extra.sh"
    extra.write_text("not in the manifest\n")
    refused = run(verify, env=env, check=False)
    assert refused.returncode != 0 and "files not in SHA256SUMS: ./genai/deploy/extra.sh" in refused.stderr
    extra.unlink()
    assert run(verify, env=env).returncode == 0


def test_an_image_archive_loads_into_podman(bundle: Path, tmp_path: Path) -> None:
    """The same archives for Podman: one of the project's images, into a throwaway store of its own."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here (Debian's podman package); Docker's load is tested below")
    storage = tmp_path / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "root"}"\nrunroot = "{tmp_path / "run"}"\n'
    )
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(storage))
    name, image_id, file = next(e[1:4] for e in manifest(bundle) if e[0] == "image" and "-nginx:" in e[1])
    try:
        loaded = run(["podman", "load", "-i", str(bundle / file)], env=env, timeout=300)
        assert name in loaded.stdout, loaded.stdout
        inspected = run(["podman", "image", "inspect", "--format", "{{.Id}}", name], env=env).stdout.strip()
        assert f"sha256:{inspected}" == image_id, (inspected, image_id)
    finally:
        shutil.rmtree(tmp_path / "root", ignore_errors=True)
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


# --- the air-gapped host ------------------------------------------------------------------------------------


@dataclass
class Host:
    """A freshly started engine with the bundle loaded, and deploy/ installed from the bundle."""

    engine: stack.Engine
    install: Path
    env_file: Path
    https_port: int
    loaded: dict[str, str] = field(default_factory=dict)

    @property
    def deploy(self) -> Path:
        return self.install / "deploy"

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # As the operator runs it: in deploy/, where docker-compose.yml and .env are.
        return run(
            ["docker", "compose", *args], env=self.engine.env, cwd=self.deploy, timeout=timeout, check=check
        )

    def preflight(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(
            [str(self.deploy / "preflight.sh"), "--name", "localhost", *args],
            env=self.engine.env,
            check=False,
            timeout=300,
        )


@pytest.fixture(scope="module")
def host(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    data_root = tmp_path_factory.mktemp("fresh-docker-root")
    install = tmp_path_factory.mktemp("opt") / "genai"
    engine = start_engine(tmp_path_factory.mktemp("dockerd", numbered=True), data_root)
    h: Host | None = None
    try:
        assert engine.docker("image", "ls", "-q").stdout.split() == [], "not a fresh engine"
        started = time.monotonic()
        run(
            [str(DEPLOY / "bundle.sh"), "verify-and-load", "--install-to", str(install), str(bundle)],
            env=engine.env,
            timeout=1800,
        )
        note(
            f"bundle.sh verify-and-load (checksums, docker load, install): {time.monotonic() - started:.0f} s"
        )
        https_port, http_port = stack._free_port(), stack._free_port()
        env_file = stack.write_env(install / "deploy", https_port, http_port)
        run(
            [str(install / "deploy" / "nginx" / "make-selfsigned-cert.sh"), "localhost", "127.0.0.1"],
            env=engine.env,
        )
        h = Host(engine, install, env_file, https_port)
        yield h
    finally:
        try:
            if h is not None:
                logs = h.compose("logs", "--no-color", check=False, timeout=120)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                (ARTIFACTS / "compose.log").write_text(logs.stdout + logs.stderr)
                h.compose("down", "--volumes", "--remove-orphans", check=False, timeout=300)
            if engine.process is not None and engine.process.poll() is None:
                engine.remove_everything()
                left = engine.leftovers()
                assert left == {"containers": [], "volumes": [], "networks": []}, left
        finally:
            engine.stop()
            assert engine.process is None or engine.process.poll() is not None, "dockerd still running"
            shutil.rmtree(data_root, ignore_errors=True)
            shutil.rmtree(install, ignore_errors=True)


def test_images_load_into_a_fresh_engine(bundle: Path, host: Host) -> None:
    for entry in manifest(bundle):
        if entry[0] != "image":
            continue
        name, image_id = entry[1], entry[2]
        loaded = host.engine.docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
        assert loaded == image_id, (name, loaded, image_id)
    # deploy/, docs/ and the models are where the guide's next steps expect them.
    assert (host.deploy / "docker-compose.yml").is_file()
    assert (host.deploy / "models" / "tiny-instruct" / "config.json").is_file()
    assert (host.deploy / "models" / "smollm2-135m-instruct.gguf").is_file()
    assert (host.install / "docs" / "red-os.md").is_file()


def test_preflight_on_this_host(host: Host) -> None:
    result = host.preflight()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "preflight.txt").write_text(result.stdout + result.stderr)
    checks = preflight_lines(result.stdout)
    assert EVERY_CHECK <= set(checks), set(checks) ^ EVERY_CHECK
    if shutil.which("getenforce") is None:
        assert checks["selinux"][0] == "skip", checks["selinux"]
    for name in (".env", "secrets", "engine", "compose", "compose file", "images", "certificate", "ports"):
        assert checks[name][0] == "ok", (name, checks[name], result.stdout)
    # The cpu profile needs no GPU: those checks say why they were skipped.
    for name in ("container_use_devices", "model", "nvidia-smi", "gpu in a container"):
        assert checks[name][0] == "skip" and checks[name][1], (name, checks[name])
    # Whatever this machine has (disk, clock, firewall), the exit status follows the failures.
    failed = [name for name, (status, _, _) in checks.items() if status == "FAIL"]
    assert (result.returncode == 0) == (not failed), result.stdout

    # The gpu profile on a host without a GPU: the GPU and model checks fail, each with what to do.
    gpu = preflight_lines(host.preflight("--profile", "gpu").stdout)
    if shutil.which("nvidia-smi") is None:
        assert gpu["nvidia-smi"][0] == "FAIL" and "NVIDIA driver" in gpu["nvidia-smi"][2], gpu["nvidia-smi"]
        assert gpu["gpu in a container"][0] == "skip"
    assert gpu["model"][0] == "FAIL" and gpu["model"][2], gpu["model"]
    assert gpu["images"][0] == "FAIL" and "vllm" in gpu["images"][1], gpu["images"]


# --- the guide's backup and restore commands, as written ----------------------------------------------------


def guide_blocks(heading: str) -> list[str]:
    """The ```sh blocks of one '## ' section of docs/operations.md."""
    text = OPERATIONS.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else None]
    return re.findall(r"^```sh\n(.*?)^```$", section, flags=re.M | re.S)


def test_backup_and_restore_commands_of_the_guide(host: Host, tmp_path: Path) -> None:
    blocks = guide_blocks("Backups and restore")
    assert len(blocks) >= 4, blocks
    # The stack from the loaded images: PostgreSQL, the migrations and the backup service.
    started = time.monotonic()
    host.compose("up", "-d", "--wait", "--wait-timeout", "300", "backup", timeout=600)
    note(f"docker compose up -d --wait backup (from the loaded images): {time.monotonic() - started:.0f} s")

    backups = host.deploy / "backups"
    log = tmp_path / "genai-backup.log"
    for block in blocks:
        dumps = sorted(backups.glob("genai-*.dump"))
        assert dumps, "the backup service dumps at start"
        script = block.replace(EXAMPLE_DUMP, dumps[-1].name)
        if "/etc/cron.d/" in script:
            # The cron line's command (after the five time fields and the user), in this install.
            entry = next(line for line in script.splitlines() if line and not line.startswith("#"))
            command = entry.split(None, 6)[6]
            assert command.startswith("cd /opt/genai/deploy && "), command
            script = command.replace("cd /opt/genai/deploy", f"cd {host.deploy}", 1)
            script = script.replace("/var/log/genai-backup.log", str(log))
        # A line the guide says to repeat ("again until ...") is repeated, for at most two minutes.
        lines = []
        for line in script.splitlines():
            if "again until" in line:
                command = line.split("#", 1)[0].strip()
                line = f"for i in $(seq 120); do {command} && break; sleep 1; done; {command}"
            lines.append(line)
        result = run(
            ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
            env=host.engine.env,
            cwd=host.deploy,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
        if "/etc/cron.d/" in block:
            assert re.search(r"backup: wrote /backups/genai-\S+\.dump", log.read_text()), log.read_text()
        if "genai-restore-check" in block:
            assert re.search(r"^\s*admin\s*$", result.stdout, flags=re.M), result.stdout
        if "genai_check" in block:
            assert re.search(r"^\s*1\s*$", result.stdout, flags=re.M), result.stdout
    # After the last block (restore over the live database, then `up -d`) the whole stack runs again.
    states = host.compose("ps", "-a", "--format", "{{.Service}} {{.State}}").stdout
    assert re.search(r"^gateway (running|restarting)", states, flags=re.M), states
    assert re.search(r"^postgres running", states, flags=re.M), states
