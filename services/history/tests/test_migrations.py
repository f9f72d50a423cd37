import asyncio

import asyncpg

from genai_common.db import migrate
from genai_history.store import COMPONENT, MIGRATIONS_DIR

ALL = ["0001_conversations.sql", "0002_search.sql", "0003_audit.sql", "0004_origin.sql"]


async def test_concurrent_migrations_apply_once(new_database_dsn: str) -> None:
    first, second = await asyncio.gather(
        migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR),
        migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR),
    )
    assert sorted([first, second]) == [[], ALL]
    assert await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR) == []

    conn = await asyncpg.connect(new_database_dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations WHERE component = $1", COMPONENT)
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == list(enumerate(ALL, start=1))
    assert [r["table_name"] for r in tables] == [
        "audit_events",
        "conversations",
        "messages",
        "schema_migrations",
    ]
