"""The auth service's database schema: numbered SQL migrations shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from genai_common.db import migrate

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
COMPONENT = "auth"


async def apply_migrations(dsn: str) -> list[str]:
    """Apply the auth migrations not applied yet; return their file names."""
    return await migrate(dsn, COMPONENT, MIGRATIONS_DIR)
