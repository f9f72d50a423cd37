import asyncio

import asyncpg

from genai_common.db import migrate
from genai_history.store import COMPONENT, MIGRATIONS_DIR

ALL = [
    "0001_conversations.sql",
    "0002_search.sql",
    "0003_audit.sql",
    "0004_origin.sql",
    "0005_search_stemming.sql",
    "0006_deleted_conversations.sql",
]


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
        "deleted_conversations",
        "messages",
        "schema_migrations",
    ]


async def test_search_stemming_reindexes_existing_messages(new_database_dsn: str, tmp_path) -> None:
    # A database at 0004 with a message in it, then upgraded: the stored message is found in word forms.
    before = tmp_path / "migrations"
    before.mkdir()
    for name in ALL[:4]:
        (before / name).write_text((MIGRATIONS_DIR / name).read_text())
    assert await migrate(new_database_dsn, COMPONENT, before) == ALL[:4]
    conn = await asyncpg.connect(new_database_dsn)
    try:
        owner = "00000000-0000-0000-0000-000000000001"
        conversation = await conn.fetchval(
            "INSERT INTO conversations (owner_id, origin) VALUES ($1, 'chat') RETURNING id", owner
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, owner_id, prompt, response, source) "
            "VALUES ($1, $2, 'Какая зима? Где ёжик?', 'Running tests', 'model')",
            conversation,
            owner,
        )
        found = "SELECT count(*) FROM messages WHERE search_vector @@ websearch_to_tsquery('russian', $1)"
        assert await conn.fetchval(found, "зиму") == 0
        assert await migrate(new_database_dsn, COMPONENT, MIGRATIONS_DIR) == ALL[4:]
        for query in ("зиму", "ежик", "run test"):
            assert await conn.fetchval(found, query) == 1, query
    finally:
        await conn.close()
