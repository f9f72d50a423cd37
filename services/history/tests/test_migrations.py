import asyncio

import asyncpg
from genai_common.db import migrate
from genai_history.store import COMPONENT, MIGRATIONS_DIR


async def test_concurrent_migrations_apply_once(new_database_dsn: str) -> None:
    first, second = await asyncio.gather(
        migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR),
        migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR),
    )
    assert sorted([first, second]) == [[], ["0001_conversations.sql"]]
    assert await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR) == []

    conn = await asyncpg.connect(new_database_dsn)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations WHERE component = $1", COMPONENT)
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [(1, "0001_conversations.sql")]
    assert [r["table_name"] for r in tables] == ["conversations", "messages", "schema_migrations"]
