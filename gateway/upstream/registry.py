"""Models registered at run time (``POST /admin/models``), kept across restarts.

Two stores behind one small protocol, :class:`ModelRegistry`:

- :class:`SqliteRegistry`, a SQLite file (``GATEWAY_REGISTRY_PATH``, by default
  ``models.sqlite3`` under the data dir). Several gateways on one host may share
  the file: SQLite in WAL mode is safe across processes on a local disk (not on
  a network filesystem, whose locks WAL cannot rely on).
- ``QdrantRegistry`` (:mod:`gateway.upstream.qdrant_registry`), a collection on
  the Qdrant server that the gateways of a deployment share already.

Every gateway reads its store periodically and brings its router in line
(:mod:`gateway.upstream.sync`). Both stores hold upstream API keys: the file is
created readable by its owner only, and the Qdrant server must require its API
key.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.exceptions import RegistryUnavailable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    alias TEXT PRIMARY KEY,
    upstream_url TEXT NOT NULL,
    model TEXT NOT NULL,
    api_key TEXT,
    registered_at REAL NOT NULL
);
"""
# Another gateway writing the shared file holds its lock this long at most.
BUSY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Registration:
    alias: str
    upstream_url: str
    model: str
    api_key: str | None = None
    registered_at: float = 0.0

    def routes_like(self, other: Registration) -> bool:
        """Same upstream, model and key: routing needs no change (the time may differ)."""
        return (self.upstream_url, self.model, self.api_key) == (
            other.upstream_url,
            other.model,
            other.api_key,
        )


class ModelRegistry(Protocol):
    """Where registrations live. Every method may raise :class:`RegistryUnavailable`."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def all(self) -> list[Registration]:
        """Every registration, by alias."""
        ...

    async def put(self, registration: Registration) -> Registration:
        """Add or replace the registration of its alias; returns it time-stamped."""
        ...

    async def delete(self, alias: str) -> bool:
        """Remove an alias; False if there was none."""
        ...


def stamped(registration: Registration) -> Registration:
    return replace(registration, registered_at=time.time())


class SqliteRegistry:
    """Registrations in a SQLite file, private to its owner (it holds API keys).

    The blocking calls run in a worker thread (``asyncio.to_thread``). Admin
    calls and sync ticks are rare, so the hop costs nothing that matters; but
    with the file shared, a statement may wait up to ``BUSY_TIMEOUT_S`` for
    another gateway's write lock, and that wait must not stall the event loop
    that serves chat traffic.
    """

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create it private before anything (an API key) is written into it; SQLite
        # gives its -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise RegistryUnavailable(f"model registry {self.path}: {exc}") from exc
        self._conn = conn

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def all(self) -> list[Registration]:
        rows, _ = await asyncio.to_thread(
            self._execute,
            "SELECT alias, upstream_url, model, api_key, registered_at FROM models ORDER BY alias",
            (),
        )
        return [Registration(*row) for row in rows]

    async def put(self, registration: Registration) -> Registration:
        row = stamped(registration)
        await asyncio.to_thread(
            self._execute,
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
            (row.alias, row.upstream_url, row.model, row.api_key, row.registered_at),
        )
        return row

    async def delete(self, alias: str) -> bool:
        _, changed = await asyncio.to_thread(
            self._execute, "DELETE FROM models WHERE alias = ?", (alias,)
        )
        return changed > 0

    def _execute(self, sql: str, params: tuple[object, ...]) -> tuple[list[Any], int]:
        """Run one statement: its rows and the count of rows it changed."""
        with self._lock:
            if self._conn is None:
                raise RegistryUnavailable("model registry is closed")
            try:
                cursor = self._conn.execute(sql, params)
                return cursor.fetchall(), cursor.rowcount
            except sqlite3.OperationalError as exc:  # locked past the timeout, disk full, ...
                raise RegistryUnavailable(f"model registry {self.path}: {exc}") from exc
