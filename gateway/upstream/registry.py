"""Models registered at run time (``POST /admin/models``), kept across restarts.

SQLite under the data dir, written through on every change and read at start.
The file holds upstream API keys, so it is created readable by its owner only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    alias TEXT PRIMARY KEY,
    upstream_url TEXT NOT NULL,
    model TEXT NOT NULL,
    api_key TEXT,
    registered_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Registration:
    alias: str
    upstream_url: str
    model: str
    api_key: str | None = None
    registered_at: float = 0.0


class ModelRegistry:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if not self._path.exists():
            # Create it private before anything (an API key) is written into it.
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("model registry is closed")
        return self._conn

    def all(self) -> list[Registration]:
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT alias, upstream_url, model, api_key, registered_at FROM models "
                    "ORDER BY alias"
                )
                .fetchall()
            )
        return [Registration(*row) for row in rows]

    def put(self, registration: Registration) -> Registration:
        stamped = Registration(
            registration.alias,
            registration.upstream_url,
            registration.model,
            registration.api_key,
            time.time(),
        )
        with self._lock:
            self._db().execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                (stamped.alias, stamped.upstream_url, stamped.model, stamped.api_key,
                 stamped.registered_at),
            )  # fmt: skip
        return stamped

    def delete(self, alias: str) -> bool:
        with self._lock:
            cursor = self._db().execute("DELETE FROM models WHERE alias = ?", (alias,))
        return cursor.rowcount > 0
