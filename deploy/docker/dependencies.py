"""Print the third-party requirements of the given pyproject.toml files, one a line.

The Docker builds install these (pinned by constraints.txt) in a layer of their own, before copying any
source, so that a code change does not reinstall every dependency. The workspace's own packages
(genai-*) are left out: they are installed from source afterwards.

    python dependencies.py libs/common/pyproject.toml services/auth/pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(pyprojects: list[Path]) -> list[str]:
    found: dict[str, str] = {}
    for path in pyprojects:
        project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
        for requirement in project.get("dependencies", []):
            match = _NAME.match(requirement)
            if match is None:
                raise ValueError(f"{path}: cannot read requirement {requirement!r}")
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            if not name.startswith("genai-"):
                found.setdefault(name, requirement.strip())
    return sorted(found.values(), key=str.lower)


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in requirements([Path(arg) for arg in argv])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
