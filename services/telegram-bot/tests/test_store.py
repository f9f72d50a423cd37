"""The bot's store keeps users' keys encrypted."""

from __future__ import annotations

import secrets
from pathlib import Path

from genai_telegram.store import LinkStore


def test_keys_are_encrypted_at_rest_and_readable_with_the_store_key(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    secret = secrets.token_urlsafe(32)
    key = "gk-abcd1234_" + secrets.token_urlsafe(32)
    store = LinkStore(path, secret)
    store.put(42, "link-1", "alice", key)
    store.set_conversation(42, "conv-1")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert key.encode() not in raw and b"gk-" not in raw

    again = LinkStore(path, secret)
    link = again.get(42)
    assert link is not None and (link.api_key, link.owner, link.conversation_id) == (key, "alice", "conv-1")
    again.close()
    # Another store key reads nothing: the account counts as unlinked.
    other = LinkStore(path, secrets.token_urlsafe(32))
    assert other.get(42) is None
    other.close()
