"""The bot's store keeps users' keys encrypted."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from genai_telegram.store import LinkStore, WrongStoreKey


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
    # Another store key (a mistyped setting) does not open it, and forgets nobody: the right key still reads it.
    with pytest.raises(WrongStoreKey, match="GENAI_TELEGRAM_STORE_KEY"):
        LinkStore(path, secrets.token_urlsafe(32))
    again = LinkStore(path, secret)
    assert again.get(42) is not None
    again.close()


def test_a_store_from_before_the_key_check_is_checked_by_its_links(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    secret = secrets.token_urlsafe(32)
    store = LinkStore(path, secret)
    store.put(42, "link-1", "alice", "gk-key")
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE meta")
    db.commit()
    db.close()
    with pytest.raises(WrongStoreKey):
        LinkStore(path, secrets.token_urlsafe(32))
    upgraded = LinkStore(path, secret)
    assert upgraded.get(42) is not None
    upgraded.close()
    with pytest.raises(WrongStoreKey):
        LinkStore(path, secrets.token_urlsafe(32))


def test_forgetting_a_link_leaves_a_newer_link_of_the_account(tmp_path: Path) -> None:
    """/unlink (or a refused key) finishing after the account linked again forgets the old link only."""
    store = LinkStore(tmp_path / "bot.sqlite3", secrets.token_urlsafe(32))
    store.put(42, "link-1", "alice", "gk-1")
    store.put(42, "link-2", "bob", "gk-2")
    store.delete(42, "link-1")
    link = store.get(42)
    assert link is not None and (link.link_id, link.owner) == ("link-2", "bob")
    store.delete(42, "link-2")
    assert store.get(42) is None
    store.close()
