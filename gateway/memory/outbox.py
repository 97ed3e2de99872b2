"""The durable outbox: memory writes that could not be completed yet.

SQLite in WAL mode under the data dir, ``synchronous=FULL`` so a write the
gateway answered for survives the process being killed. Entries replay
oldest first, and a user's entries strictly in the order they were accepted;
order only matters within one user, so one user's entries never wait on
another's (``head`` can put a user someone is waiting for first). Because
point ids derive from scope and text, replaying an entry that was already
half-applied never duplicates anything.

An entry that can never be stored (the embedder rejects it, the store cannot
represent it, ...) is moved to the ``dead`` table with its reason, never
dropped silently and never left blocking the rest.

A write may say when the request behind it began (``put(..., since=)``, a
chat turn's start): it is refused (``Forgotten``) when its user was
forgotten since, checked under the lock ``purge`` notes the forget under, so
no turn that read the user's memories before a forget brings them back
after it (gateway.memory.forgets).

Forgetting a user (``purge``) and deleting a memory by id (``drop``) remove
its text from both tables, the dead one included, and leave none of it in
the file: ``secure_delete`` zeroes what a delete frees, and a checkpoint
afterwards moves the zeroed pages into the database and empties the WAL
(which held the rows as they were written).

The outbox keeps, in memory, which entries of which user are waiting
(gateway.memory.pending), so the memory service can tell whether a user has
writes not stored yet (for read-your-writes) without touching the disk, at
a cost that does not grow with the queue.

A queued memory has its final id already (the API answered it with 202), so
it can be fetched (``find``) and deleted (``drop``) by id before it is stored.
Dropping one memory of an entry rewrites the entry and bumps its in-memory
``revision``: a replay that read the entry before (and is embedding it) sees
that it is not current any more and leaves it for the next round.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gateway.memory.forgets import Forgotten, RecentForgets
from gateway.memory.outbox_rows import DeadEntry, OutboxEntry, decode_memories, encode_memories
from gateway.memory.outbox_schema import (
    create,
    id_of,
    index_ids,
    rows_holding,
    shrink,
    transaction,
)
from gateway.memory.pending import PendingView
from gateway.memory.records import MemoryRecord, NewMemory, Scope

OUTBOX_FILE = "outbox.sqlite3"  # under the data dir
# How many rows ``head`` reads ahead to fill a batch up to its size budget.
_HEAD_SCAN = 256
# Free space in the file worth giving back once the outbox is empty (``shrink``).
SHRINK_FREE_BYTES = 8 << 20


class Outbox:
    def __init__(self, path: Path, shrink_free_bytes: int = SHRINK_FREE_BYTES) -> None:
        self._path = path
        self._shrink_free_bytes = shrink_free_bytes
        self._conn: sqlite3.Connection | None = None
        # One connection shared by worker threads; sqlite3 objects are not thread-safe,
        # so ``_lock`` guards it. The in-memory view of what waits changes in the
        # thread that changed the table, in the same critical section (never as
        # ``depth -= await ...``, which would lose the writes that land meanwhile).
        # The event loop reads the view under its own lock alone: a commit that
        # waits on the disk, or on another process's lock on the file (SQLite's
        # busy timeout), never stalls the loop.
        self._lock = threading.Lock()
        self._view = PendingView()
        self._forgets = RecentForgets()  # under _lock, as the puts that check it
        self._file: tuple[int, int] | None = None  # the opened file's device and inode

    def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # a forgotten text leaves no bytes behind
        create(conn)
        self._conn = conn
        self._file = _identity(self._path)
        for seq, tenant, user_id in self._execute("SELECT seq, tenant, user_id FROM outbox"):
            self._view.track(int(seq), Scope(tenant, user_id))
        [(dead,)] = self._execute("SELECT COUNT(*) FROM dead")
        self._view.set_dead(int(dead))
        if not self._view.depth:
            shrink(conn, self._shrink_free_bytes)  # drained before a restart

    def lost(self) -> str | None:
        """Why the file this outbox writes to is no longer the data dir's, or
        None. SQLite keeps writing to a file removed under it (an ``rm -rf`` of
        the data dir, a volume unmounted): every write would be lost at the
        next restart. One stat call: microseconds."""
        if self._file is None:
            return None
        try:
            now = _identity(self._path)
        except OSError as exc:
            return f"the outbox file {self._path} is gone ({exc.strerror}): restart the gateway"
        if now != self._file:
            return f"the outbox file {self._path} was replaced: restart the gateway"
        return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction on the connection (under ``_lock``): all of it or none."""
        if self._conn is None:
            raise RuntimeError("outbox is closed")
        return transaction(self._conn)

    def _erase(self) -> None:
        """After a purge or a drop (under ``_lock``): the zeroed pages into the
        database, the WAL emptied, so the removed texts are gone from the file,
        those of rows deleted earlier (stored, then ``done``) included, whose
        frames the WAL keeps until a checkpoint. Best effort: a reader in
        another process can hold the WAL back."""
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("outbox is closed")
            return self._conn.execute(sql, params).fetchall()

    # Synchronous API (fast, local); the async wrappers keep fsync off the loop.
    def put_sync(
        self,
        scope: Scope,
        memories: Sequence[NewMemory],
        since: float | None = None,
        *,
        held: bool = False,
    ) -> int:
        """Queue the memories, committed when this returns; their entry's seq.
        ``since``: when the request behind them began (``time.perf_counter``);
        raises ``Forgotten`` if the user was forgotten after that. ``held``:
        a direct write's journal, which waits for nothing until it is settled
        or released (``settle_held``, ``release_held``)."""
        with self._lock:
            if self._conn is None:
                raise RuntimeError("outbox is closed")
            if (lost := self.lost()) is not None:
                raise sqlite3.OperationalError(lost)
            if since is not None and self._forgets.since(scope, since):
                raise Forgotten(f"a user of tenant {scope.tenant} was forgotten since")
            began = time.time()
            if since is not None:  # the wall clock at the request's start
                began -= max(0.0, time.perf_counter() - since)
            with self._transaction() as conn:
                cursor = conn.execute(
                    "INSERT INTO outbox (tenant, user_id, memories, enqueued_at) "
                    "VALUES (?, ?, ?, ?)",
                    (scope.tenant, scope.user_id, encode_memories(memories), began),
                )
                seq = int(cursor.lastrowid or 0)
                index_ids(conn, seq, scope, memories)
            if held:
                self._view.hold(seq, scope)
            else:
                self._view.track(seq, scope)
            return seq

    async def put(
        self,
        scope: Scope,
        memories: Sequence[NewMemory],
        since: float | None = None,
        *,
        held: bool = False,
    ) -> int:
        return await asyncio.to_thread(
            functools.partial(self.put_sync, scope, memories, since, held=held)
        )

    def settle_held(self, seq: int) -> None:
        """A direct write stored what its held row journals: the row goes after
        the store's next flush, as a replayed one does."""
        self._view.settle_held(seq)

    def release_held(self, seq: int, scope: Scope) -> None:
        """A direct write could not store: its held row is queued, for the replayer."""
        self._view.release_held(seq, scope)

    def head_sync(
        self, limit: int = 1, max_chars: int | None = None, first: Sequence[Scope] = ()
    ) -> list[OutboxEntry]:
        """Up to ``limit`` entries, oldest first, the entries of the users in
        ``first`` before the others (each user's in order). With ``max_chars``,
        entries stop once their texts total that many characters (at least one
        entry comes back, however large)."""
        with self._lock:  # rows and their revisions read together
            if self._conn is None:
                raise RuntimeError("outbox is closed")
            # Stored rows that wait for the store's flush, and the rows of direct
            # writes in flight, are passed over.
            stored = self._view.passed_over()
            rows: list[Any] = []
            for scope in first:
                rows += self._conn.execute(
                    "SELECT seq, tenant, user_id, memories, attempts, enqueued_at FROM outbox "
                    "WHERE tenant = ? AND user_id = ? ORDER BY seq LIMIT ?",
                    (scope.tenant, scope.user_id, limit + len(stored)),
                ).fetchall()
            rows += self._conn.execute(
                "SELECT seq, tenant, user_id, memories, attempts, enqueued_at FROM outbox "
                "ORDER BY seq LIMIT ?",
                (min(limit, _HEAD_SCAN) + len(stored),),
            ).fetchall()
            revisions = self._view.revisions(seq for seq, *_ in rows)
        entries: list[OutboxEntry] = []
        seen: set[int] = set(stored)
        total = 0
        for seq, tenant, user_id, memories, attempts, began_at in rows:
            if seq in seen:
                continue
            entry = OutboxEntry(
                seq, Scope(tenant, user_id), decode_memories(memories), attempts, began_at,
                revisions[seq],
            )  # fmt: skip
            if entries and (
                len(entries) >= limit or (max_chars is not None and total + entry.chars > max_chars)
            ):
                break
            seen.add(seq)
            entries.append(entry)
            total += entry.chars
        return entries

    async def head(
        self, limit: int = 1, max_chars: int | None = None, first: Sequence[Scope] = ()
    ) -> list[OutboxEntry]:
        """The oldest ``limit`` entries, oldest first (see ``head_sync``)."""
        return await asyncio.to_thread(self.head_sync, limit, max_chars, first)

    def settle(self, seqs: Sequence[int]) -> None:
        """The entries are stored: they wait no more (in memory, at once), and
        their rows stay until ``done``, which the replayer calls once the
        store has flushed them to disk."""
        self._view.settle(seqs)

    def unflushed(self) -> set[int]:
        """The stored entries whose rows wait for the store's flush."""
        return self._view.unflushed()

    def unflushed_count(self) -> int:
        return self._view.unflushed_count()

    def unflushed_age(self) -> float:
        return self._view.unflushed_age()  # seconds since the oldest was stored; 0: none

    async def done(self, seqs: Sequence[int]) -> None:
        """Delete the rows (entries stored and flushed, or gone for good)."""

        def delete() -> None:
            with self._lock:
                assert self._conn is not None
                self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])
                self._view.untrack(seqs)
                if not self._view.depth:  # a backlog drained: its space back to the disk
                    shrink(self._conn, self._shrink_free_bytes)

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
                with self._transaction() as conn:
                    moved = conn.execute(
                        "INSERT INTO dead (seq, tenant, user_id, memories, enqueued_at, "
                        "failed_at, error) SELECT seq, tenant, user_id, memories, enqueued_at, "
                        "?, ? FROM outbox WHERE seq = ?",
                        (time.time(), error, seq),
                    ).rowcount  # 0: purged meanwhile (its user was forgotten)
                    conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self._view.untrack([seq])
                self._view.add_dead(moved)

        await asyncio.to_thread(move)

    async def purge(self, scope: Scope) -> set[str]:
        """Drop a user's queued writes and those set aside (they asked to be
        forgotten), leaving none of their text in the file; the ids of the
        memories they held."""

        def delete() -> set[str]:
            where = (scope.tenant, scope.user_id)
            with self._lock:
                # Noted first: a put that comes after this, for a request begun
                # before it, is refused (``put_sync``).
                self._forgets.forgot(scope, time.perf_counter())
                # A direct write in flight keeps its row: it stores as a write
                # after the forget (gateway.memory.writes), and the row is its journal.
                held = self._view.held(scope)
                spare = f" AND seq NOT IN ({', '.join('?' * len(held))})" if held else ""
                with self._transaction() as conn:
                    rows = conn.execute(
                        "DELETE FROM outbox WHERE tenant = ? AND user_id = ?"
                        f"{spare} RETURNING seq, memories",
                        (*where, *held),
                    ).fetchall()
                    dead = conn.execute(
                        "DELETE FROM dead WHERE tenant = ? AND user_id = ? RETURNING memories",
                        where,
                    ).fetchall()
                self._view.untrack(seq for seq, _ in rows)
                self._view.add_dead(-len(dead))
                # Always: rows of the user's already stored and deleted (a replayed
                # entry, a direct write's journal) left their text in WAL frames.
                self._erase()
            texts = [raw for _, raw in rows] + [raw for (raw,) in dead]
            ids = {id_of(scope, m.text) for raw in texts for m in decode_memories(raw)}
            return {wanted for wanted in ids if wanted is not None}

        return await asyncio.to_thread(delete)

    def _find_sync(self, tenant: str, wanted: str, user_id: str | None) -> MemoryRecord | None:
        with self._lock:
            assert self._conn is not None
            rows = rows_holding(self._conn, "outbox", tenant, wanted, user_id)
        for _, user, raw in rows:
            for m in decode_memories(raw):
                if id_of(Scope(tenant, user), m.text) == wanted:
                    return MemoryRecord(
                        wanted, m.text, user, m.created_at, m.metadata, m.session_id, m.role
                    )
        return None

    async def find(
        self, tenant: str, wanted: str, user_id: str | None = None
    ) -> MemoryRecord | None:
        """The queued memory with this id in the tenant (one user's, with ``user_id``)."""
        return await asyncio.to_thread(self._find_sync, tenant, wanted, user_id)

    def _drop_sync(self, tenant: str, wanted: str, user_id: str | None) -> str | None:
        with self._lock:
            owner: str | None = None
            rewritten: list[int] = []  # queued rows, whose replay must read them again
            gone: list[int] = []
            buried = 0  # dead rows deleted
            # A direct write in flight keeps its row, as in a purge: it stores as a
            # write after the delete, and the row is what backs its answer.
            held = self._view.held_seqs()
            with self._transaction() as conn:
                for table in ("outbox", "dead"):
                    for seq, user, raw in rows_holding(conn, table, tenant, wanted, user_id):
                        if table == "outbox" and seq in held:
                            continue
                        scope = Scope(tenant, user)
                        memories = decode_memories(raw)
                        kept = [m for m in memories if id_of(scope, m.text) != wanted]
                        if len(kept) == len(memories):
                            continue
                        owner = user
                        if kept:
                            conn.execute(
                                f"UPDATE {table} SET memories = ? WHERE seq = ?",
                                (encode_memories(kept), seq),
                            )
                            conn.execute(
                                "DELETE FROM queued_ids WHERE memory_id = ? AND seq = ?",
                                (wanted, seq),
                            )
                            if table == "outbox":
                                rewritten.append(seq)
                        else:
                            conn.execute(f"DELETE FROM {table} WHERE seq = ?", (seq,))
                            if table == "outbox":
                                gone.append(seq)
                            else:
                                buried += 1
            self._view.rewritten(rewritten)
            self._view.add_dead(-buried)
            self._view.untrack(gone)
            self._erase()  # always, as in a purge: earlier rows' frames hold the text
            return owner

    async def drop(self, tenant: str, wanted: str, user_id: str | None = None) -> str | None:
        """Delete the queued memory with this id from every entry that holds it,
        set-aside ones included (an entry left empty goes), leaving none of its
        text in the file; the user it belonged to, or None."""
        return await asyncio.to_thread(self._drop_sync, tenant, wanted, user_id)

    @property
    def depth(self) -> int:
        """Entries waiting; kept in memory so probes and metrics never touch the disk."""
        return self._view.depth

    def pending(self, scope: Scope) -> int:
        """How many entries of this user are waiting (in memory, no disk)."""
        return self._view.count(scope)

    def pending_seqs(self, scope: Scope) -> set[int]:
        """This user's waiting entries (their own index: no scan of the queue)."""
        return self._view.seqs(scope)

    def is_pending(self, seq: int) -> bool:
        return self._view.is_pending(seq)

    def is_current(self, entry: OutboxEntry) -> bool:
        """The entry still waits, unchanged since it was read."""
        return self._view.is_current(entry.seq, entry.revision)

    @property
    def dead(self) -> int:
        """Entries set aside; kept in memory, like ``depth``, for the gauge."""
        return self._view.dead

    def dead_count(self) -> int:
        """Entries set aside, counted in the table."""
        return int(self._execute("SELECT COUNT(*) FROM dead")[0][0])

    def dead_entries(self, limit: int = 100) -> list[DeadEntry]:
        """The most recently set-aside entries first, with their reasons."""
        rows = self._execute(
            "SELECT seq, tenant, user_id, memories, enqueued_at, failed_at, error FROM dead "
            "ORDER BY failed_at DESC, seq DESC LIMIT ?",
            (limit,),
        )
        return [
            DeadEntry(seq, Scope(tenant, user_id), len(json.loads(raw)), enq, failed, error)
            for seq, tenant, user_id, raw, enq, failed, error in rows
        ]


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino
