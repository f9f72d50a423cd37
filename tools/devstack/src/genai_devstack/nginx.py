"""Rendering deploy/nginx/ templates into a runnable config: the shipped config is the tested config.

Templates use ${GENAI_...} placeholders, the same ones the nginx Docker image's envsubst fills in
production; nginx's own $variables are left alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

_PLACEHOLDER = re.compile(r"\$\{(GENAI_[A-Z0-9_]+)\}")


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "deploy" / "nginx").is_dir():
            return parent
    raise RuntimeError("cannot find deploy/nginx/ above the devstack package")


def render(template: str, values: dict[str, str]) -> str:
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if missing:
        raise KeyError(f"nginx template needs values for: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if not found:
        raise RuntimeError("nginx is not installed (Debian/Red OS package: nginx)")
    return found


def _searchable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach `path` (every directory on the way is o+x)."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in (path, *path.parents))


def temp_root(prefix: Path) -> Path:
    """Where nginx writes request bodies beyond their buffer (and proxy temp files).

    Under `prefix` where its workers can reach it. When the master runs as root its workers run as nobody,
    who cannot pass a private directory on the way (a test run's temporary directory, or a home directory
    of mode 700): then a directory of this prefix's own in the system's temporary directory.
    """
    inside = prefix / "tmp"
    if os.geteuid() != 0 or _searchable_by_others(prefix):
        return inside
    digest = hashlib.sha256(str(prefix.resolve()).encode()).hexdigest()[:12]
    outside = Path(tempfile.gettempdir()) / f"genai-nginx-{digest}"
    outside.mkdir(mode=0o711, exist_ok=True)
    outside.chmod(0o711)
    return outside


def write_config(prefix: Path, values: dict[str, str]) -> Path:
    """Render the main config and the site into `prefix`; return the main config's path."""
    templates = repo_root() / "deploy" / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(exist_ok=True)
    temp = temp_root(prefix)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (temp / sub).mkdir(parents=True, exist_ok=True)
        # Workers may run as an unprivileged user when the master runs as root.
        (temp / sub).chmod(0o1777)
    site = prefix / "genai.conf"
    site.write_text(render((templates / "genai.conf.template").read_text(), values))
    main = prefix / "nginx.conf"
    main.write_text(
        render(
            (templates / "nginx.conf.template").read_text(),
            {**values, "GENAI_NGINX_PREFIX": str(prefix), "GENAI_NGINX_TEMP": str(temp)},
        )
    )
    return main


def check_config(config: Path) -> None:
    result = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(config.parent), "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"nginx rejected {config}:\n{result.stderr}")


def command(config: Path) -> list[str]:
    return [nginx_binary(), "-p", str(config.parent), "-c", str(config), "-g", "daemon off;"]
