"""The outbox's SQLite schema, and the index of the memory ids its rows hold.

A queued memory already has its final id (the API answered with it), and
``GET`` / ``DELETE /v1/memories/{id}`` may name it without its user. The id
is a hash of tenant, user and text, so finding it by reading the rows means
decoding and hashing every queued memory of the tenant, seconds at a deep
queue, under the lock every chat turn's write takes (figures:
bench/results/outbox_scale.md). ``queued_ids`` maps each id to the rows that
hold it instead, written in the transaction that writes the row. Triggers
keep it in step with every delete (stored, purged, dropped), so no code path
can leave an id pointing at nothing; an entry moved to ``dead`` keeps its seq,
and so its ids.

A data dir made before the index existed gets it filled from its rows on
the first open; every open indexes the rows that lack it (a scan of the
index by seq, no decoding, when none do).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from gateway.memory.outbox_rows import decode_memories
from gateway.memory.records import NewMemory, Scope, memory_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    user_id TEXT NOT NULL,
    memories TEXT NOT NULL,
    enqueued_at REAL NOT NULL, -- Unix time the request behind the row began
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
CREATE INDEX IF NOT EXISTS outbox_by_user ON outbox (tenant, user_id, seq);
CREATE INDEX IF NOT EXISTS dead_by_user ON dead (tenant, user_id);
CREATE TABLE IF NOT EXISTS queued_ids (
    memory_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (memory_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queued_ids_by_seq ON queued_ids (seq);
-- A row moved to dead (``bury``) is inserted there before it leaves the outbox.
CREATE TRIGGER IF NOT EXISTS outbox_row_gone AFTER DELETE ON outbox
WHEN NOT EXISTS (SELECT 1 FROM dead WHERE seq = old.seq)
BEGIN DELETE FROM queued_ids WHERE seq = old.seq; END;
CREATE TRIGGER IF NOT EXISTS dead_row_gone AFTER DELETE ON dead
BEGIN DELETE FROM queued_ids WHERE seq = old.seq; END;
"""


def create(conn: sqlite3.Connection) -> None:
    """Make the schema, and index the rows that hold memories not indexed yet
    (in one transaction): all of them in a file from before the index, and any
    that an older version of the gateway queued, should it have run on the
    file in between (it knows no index; a downgrade and upgrade again)."""
    conn.executescript(SCHEMA)
    with transaction(conn):
        for table in ("outbox", "dead"):
            rows = conn.execute(
                f"SELECT seq, tenant, user_id, memories FROM {table} t "
                "WHERE NOT EXISTS (SELECT 1 FROM queued_ids q WHERE q.seq = t.seq)"
            )
            for seq, tenant, user_id, raw in rows.fetchall():
                index_ids(conn, seq, Scope(tenant, user_id), decode_memories(raw))


def shrink(conn: sqlite3.Connection, free_bytes: int) -> None:
    """Give the file's free pages back to the disk when they come to ``free_bytes``
    or more (VACUUM, then the WAL emptied). SQLite reuses the
    pages a delete frees but never returns them, so an outbox that held a backlog
    (an embedder outage, a large import) would keep that much of the data dir's
    disk for good. Meant for an empty outbox, where VACUUM copies only the dead
    entries. Best effort: a full disk, or a reader in another process, leaves the
    file as it was."""
    [(free,)] = conn.execute("PRAGMA freelist_count").fetchall()
    [(page_size,)] = conn.execute("PRAGMA page_size").fetchall()
    if int(free) * int(page_size) < free_bytes:
        return
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError:
        pass  # left for the next drain


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction on ``conn``: all of it or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite ends some itself (a full disk: SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def index_ids(
    conn: sqlite3.Connection, seq: int, scope: Scope, memories: Iterable[NewMemory]
) -> None:
    ids = [(wanted, seq) for m in memories if (wanted := id_of(scope, m.text)) is not None]
    conn.executemany("INSERT OR IGNORE INTO queued_ids (memory_id, seq) VALUES (?, ?)", ids)


def id_of(scope: Scope, text: str) -> str | None:
    """The memory's id; None for a text with a lone surrogate, which has no UTF-8
    to hash. No API answered with an id for one, so nobody can ask for it: such
    texts are refused at the door now, and one queued before that is set aside
    by the replay."""
    try:
        return memory_id(scope, text)
    except UnicodeEncodeError:
        return None


def rows_holding(
    conn: sqlite3.Connection, table: str, tenant: str, wanted: str, user_id: str | None
) -> list[tuple[int, str, str]]:
    """The rows of ``table`` that hold the memory ``wanted``: (seq, user, memories)."""
    assert table in ("outbox", "dead")
    sql = (
        f"SELECT t.seq, t.user_id, t.memories FROM queued_ids q JOIN {table} t "
        "ON t.seq = q.seq WHERE q.memory_id = ? AND t.tenant = ?"
    )
    params = [wanted, tenant]
    if user_id is not None:
        sql += " AND t.user_id = ?"
        params.append(user_id)
    return conn.execute(sql + " ORDER BY t.seq", params).fetchall()
