"""The durable outbox: memory writes that could not be completed yet.

SQLite in WAL mode under the data dir, ``synchronous=FULL`` so a write the
gateway answered for survives the process being killed. Entries replay in
order (oldest first); the head blocks the rest, so a user's memories land in
the order they were accepted. Because point ids derive from scope and text,
replaying an entry that was already half-applied never duplicates anything.

An entry the embedder rejects outright (a 4xx, which retrying cannot fix) is
moved to the ``dead`` table with its error, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.memory.records import NewMemory, Scope

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    memories TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    memories TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    error TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    scope: Scope
    memories: list[NewMemory]
    attempts: int


def encode_memories(memories: Sequence[NewMemory]) -> str:
    return json.dumps(
        [
            {
                "text": m.text,
                "created_at": m.created_at.isoformat(),
                "metadata": dict(m.metadata),
                "session_id": m.session_id,
                "role": m.role,
                "source": m.source,
            }
            for m in memories
        ]
    )


def decode_memories(raw: str) -> list[NewMemory]:
    items: list[dict[str, Any]] = json.loads(raw)
    return [
        NewMemory(
            text=item["text"],
            created_at=datetime.fromisoformat(item["created_at"]),
            metadata=item.get("metadata") or {},
            session_id=item.get("session_id"),
            role=item.get("role"),
            source=item.get("source", "api"),
        )
        for item in items
    ]


class Outbox:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        # One connection shared by worker threads; sqlite3 objects are not thread-safe.
        # The lock also guards _depth, which changes in the thread that changed the
        # table: never as ``self._depth -= await ...``, which reads the depth before
        # the await and so loses the writes that land meanwhile.
        self._lock = threading.Lock()
        self._depth = 0

    def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._depth = int(self._execute("SELECT COUNT(*) FROM outbox")[0][0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("outbox is closed")
            return self._conn.execute(sql, params).fetchall()

    # Synchronous API (fast, local); the async wrappers keep fsync off the loop.
    def put_sync(self, scope: Scope, memories: Sequence[NewMemory]) -> int:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("outbox is closed")
            cursor = self._conn.execute(
                "INSERT INTO outbox (tenant, user_id, memories, enqueued_at) VALUES (?, ?, ?, ?)",
                (scope.tenant, scope.user_id, encode_memories(memories), time.time()),
            )
            self._depth += 1
            return int(cursor.lastrowid or 0)

    async def put(self, scope: Scope, memories: Sequence[NewMemory]) -> int:
        return await asyncio.to_thread(self.put_sync, scope, memories)

    def head_sync(self, limit: int = 1) -> list[OutboxEntry]:
        rows = self._execute(
            "SELECT seq, tenant, user_id, memories, attempts FROM outbox ORDER BY seq LIMIT ?",
            (limit,),
        )
        return [
            OutboxEntry(seq, Scope(tenant, user_id), decode_memories(memories), attempts)
            for seq, tenant, user_id, memories, attempts in rows
        ]

    async def head(self, limit: int = 1) -> list[OutboxEntry]:
        """The oldest ``limit`` entries, oldest first."""
        return await asyncio.to_thread(self.head_sync, limit)

    async def done(self, seqs: Sequence[int]) -> None:
        def delete() -> None:
            with self._lock:
                assert self._conn is not None
                cursor = self._conn.executemany(
                    "DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs]
                )
                self._depth -= cursor.rowcount

        await asyncio.to_thread(delete)

    async def failed(self, seq: int, error: str) -> None:
        await asyncio.to_thread(
            self._execute,
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
            (error, seq),
        )

    async def bury(self, seq: int, error: str) -> None:
        def move() -> None:
            with self._lock:
                assert self._conn is not None
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute(
                    "INSERT INTO dead (seq, tenant, user_id, memories, enqueued_at, failed_at, "
                    "error) SELECT seq, tenant, user_id, memories, enqueued_at, ?, ? "
                    "FROM outbox WHERE seq = ?",
                    (time.time(), error, seq),
                )
                deleted = self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
                self._conn.execute("COMMIT")
                self._depth -= deleted

        await asyncio.to_thread(move)

    async def purge(self, scope: Scope) -> int:
        """Drop a user's queued writes (they asked to be forgotten)."""

        def delete() -> int:
            with self._lock:
                assert self._conn is not None
                cursor = self._conn.execute(
                    "DELETE FROM outbox WHERE tenant = ? AND user_id = ?",
                    (scope.tenant, scope.user_id),
                )
                self._depth -= cursor.rowcount
                return int(cursor.rowcount)

        return await asyncio.to_thread(delete)

    @property
    def depth(self) -> int:
        """Entries waiting; kept in memory so probes and metrics never touch the disk."""
        return self._depth

    def dead_count(self) -> int:
        return int(self._execute("SELECT COUNT(*) FROM dead")[0][0])
