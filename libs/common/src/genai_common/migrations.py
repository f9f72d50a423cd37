"""Apply a service's migrations as a one-shot job, without starting the service.

    python -m genai_common.migrations --component history --package genai_history \\
        --database-url-env GENAI_HISTORY_DATABASE_URL

The SQL files are the `migrations/` folder shipped inside the package, the same ones the service applies
when it starts with migrate_on_start; the package is located, not imported, so nothing of the service
runs. Used by deploy/docker-compose.yml so that upgrades migrate once, before any replica starts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
from pathlib import Path

import asyncpg

from genai_common.db import migrate
from genai_common.logs import setup_logging

logger = logging.getLogger(__name__)


def migrations_dir(package: str) -> Path:
    """The `migrations/` folder inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {package!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "migrations"
        if candidate.is_dir():
            return candidate
    raise LookupError(f"package {package!r} has no migrations/ folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genai_common.migrations", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--component", required=True, help="name in the schema_migrations table, e.g. history"
    )
    parser.add_argument(
        "--package", required=True, help="Python package holding migrations/, e.g. genai_history"
    )
    parser.add_argument("--database-url-env", required=True, help="environment variable holding the DSN")
    args = parser.parse_args(argv)
    setup_logging("migrations", os.environ.get("GENAI_LOG_LEVEL", "INFO"))

    # The DSN comes from the environment, never the command line, where `ps` would show its password.
    dsn = os.environ.get(args.database_url_env, "")
    if not dsn.startswith(("postgresql://", "postgres://")):
        logger.error("%s must be set to a postgresql:// URL", args.database_url_env)
        return 1
    try:
        directory = migrations_dir(args.package)
        applied = asyncio.run(migrate(dsn, args.component, directory))
    except LookupError as exc:
        logger.error("%s", exc)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        # Only the error's class and text: asyncpg's messages do not carry the DSN.
        logger.error("migrations of %s failed: %s: %s", args.component, type(exc).__name__, exc)
        return 1
    logger.info("%s: %d migration(s) applied, schema up to date", args.component, len(applied))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
