"""A direct write's journal: its row in the outbox until the store has flushed it.

The memory API stores a write at once and answers 201. Qdrant Edge has the
new points in memory-mapped files until its shard is flushed (the replayer
flushes about once a second), so a power cut right after the answer would
lose them. So the write's memories are first committed to the outbox as a
*held* row (one local commit): the replayer passes it over and no read waits
for it. Then:

- stored (under the writer's lock, so a forget after it takes the row with
  the points): the row waits for the next flush, as a replayed one's does;
- an outage mid-write, or a client gone mid-write (the write was accepted
  with its commit): the row is the queued write, replayed once;
- refused (the store or the embedder can never take it): the row goes.

A row left by a crash replays at start, idempotently (a memory's id is its
scope and text). A store that has each write on disk when it answers (a
Qdrant server: ``needs_flush`` is false) needs no journal.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence

from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope

logger = logging.getLogger("gateway.memory")


class Journal:
    def __init__(self, outbox: Outbox, *, needed: bool, wake: Callable[[], None]) -> None:
        self._outbox = outbox
        self._needed = needed
        self._wake = wake  # the replayer: a row to flush, or to replay

    async def open(self, scope: Scope, memories: Sequence[NewMemory]) -> int | None:
        """The held row of a write about to run (None: no journal needed).
        Raises sqlite3.Error when the outbox cannot take it."""
        if not self._needed:
            return None
        return await self._outbox.put(scope, memories, held=True)

    def on_stored(self, row: int | None) -> Callable[[], None] | None:
        """What the writer calls, under its lock, once the row's memories are stored."""
        return None if row is None else functools.partial(self._outbox.settle_held, row)

    def stored(self, row: int | None) -> None:
        if row is not None:
            self._wake()  # its flush is due within the interval

    def requeue(self, row: int | None, scope: Scope) -> None:
        """The write did not store, and was accepted: its row is the queued write."""
        if row is not None:
            self._outbox.release_held(row, scope)
            self._wake()

    async def drop(self, row: int | None) -> None:
        """The write was refused: its row goes (or, if that fails, replays at
        start and is set aside then)."""
        if row is None:
            return
        try:
            await asyncio.shield(self._outbox.done([row]))
        except sqlite3.Error as exc:
            logger.warning("the outbox row of a refused write stays: %s", exc)
