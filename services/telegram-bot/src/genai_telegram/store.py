"""The bot's own store: which Telegram accounts are linked, with what key, in which conversation.

A linked account's API key (chat scope) is kept encrypted with Fernet under a key derived from
GENAI_TELEGRAM_STORE_KEY, so that a copy of this file alone gives no key away; the gateway's database
keeps only a hash of it. SQLite in one file: the bot runs as one process (Telegram hands each update to
one getUpdates caller or one webhook), and its state is small. Calls are short local writes, made inline.

The store remembers a value encrypted with its key, and refuses to open with another key (`WrongStoreKey`):
a mistyped setting must stop the bot with a clear message, not make it forget every linked account.
"""

from __future__ import annotations

import base64
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_SCHEMA = """
CREATE TABLE IF NOT EXISTS links (
    telegram_user_id INTEGER PRIMARY KEY,
    link_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    api_key BLOB NOT NULL,
    conversation_id TEXT NOT NULL DEFAULT ''
)
"""
_META = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)"
_KEY_CHECK = b"genai-telegram-store"


class WrongStoreKey(Exception):
    """The store was written with another GENAI_TELEGRAM_STORE_KEY."""


@dataclass(frozen=True)
class Link:
    telegram_user_id: int
    link_id: str
    owner: str
    api_key: str
    conversation_id: str


def _fernet(secret: str) -> Fernet:
    # HKDF, not the secret itself: any long random string works as the setting, and the derived key is
    # bound to this use.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"genai-telegram-store v1").derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


class LinkStore:
    def __init__(self, path: Path, secret: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_META)
        self._fernet = _fernet(secret)
        try:
            self._check_key(path)
        except BaseException:
            self._db.close()
            raise

    def _check_key(self, path: Path) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is not None:
            readable = self._readable(row[0])
        else:
            # A store from before the check: the key is right if it reads one of the stored keys.
            sample = self._db.execute("SELECT api_key FROM links LIMIT 1").fetchone()
            readable = sample is None or self._readable(sample[0])
        if not readable:
            raise WrongStoreKey(
                f"GENAI_TELEGRAM_STORE_KEY is not the key {path} was written with: set that key again; "
                "if it is lost, move the file away and every account links again"
            )
        if row is None:
            self._db.execute(
                "INSERT INTO meta (name, value) VALUES ('key_check', ?)", (self._fernet.encrypt(_KEY_CHECK),)
            )

    def _readable(self, token: bytes) -> bool:
        try:
            self._fernet.decrypt(token)
        except InvalidToken:
            return False
        return True

    def close(self) -> None:
        self._db.close()

    def get(self, telegram_user_id: int) -> Link | None:
        row = self._db.execute(
            "SELECT link_id, owner, api_key, conversation_id FROM links WHERE telegram_user_id = ?",
            (telegram_user_id,),
        ).fetchone()
        if row is None:
            return None
        try:
            api_key = self._fernet.decrypt(row[2]).decode()
        except InvalidToken:
            # Damaged (the store's key is checked as it opens): as good as unlinked; linking again replaces it.
            return None
        return Link(telegram_user_id, row[0], row[1], api_key, row[3])

    def put(self, telegram_user_id: int, link_id: str, owner: str, api_key: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO links (telegram_user_id, link_id, owner, api_key, conversation_id) "
            "VALUES (?, ?, ?, ?, '')",
            (telegram_user_id, link_id, owner, self._fernet.encrypt(api_key.encode())),
        )

    def set_conversation(self, telegram_user_id: int, conversation_id: str) -> None:
        self._db.execute(
            "UPDATE links SET conversation_id = ? WHERE telegram_user_id = ?",
            (conversation_id, telegram_user_id),
        )

    def delete(self, telegram_user_id: int, link_id: str) -> None:
        """Forget the account's link `link_id`; a newer link of the account (linked meanwhile) stays."""
        self._db.execute(
            "DELETE FROM links WHERE telegram_user_id = ? AND link_id = ?", (telegram_user_id, link_id)
        )
