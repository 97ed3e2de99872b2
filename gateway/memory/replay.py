"""Replaying the outbox: store what waits, retry only outages, set aside the rest.

The replayer runs as one background task. It takes entries oldest first, in
batches bounded by their text size (one entry of any size always goes), and
writes each batch with one embedder call at background priority, so queries
of chat turns overtake it at the embedder. Only an outage (the embedder or
the store unavailable) stops a drain and is retried, with backoff; an entry
that fails for any other reason can never be stored as it is: it is set
aside in the outbox's ``dead`` table with its reason, and the rest go on.

Forget: a user forgotten while the replayer waits on the embedder for a
batch that holds their entries must not be stored once the embedder answers.
The write (``Writer.write``, gateway.memory.writes) stores a batch under the
lock that ``forget`` holds around its purge and delete, and first asks the
batch's ``Claim`` which entries are still queued: a purged entry was
forgotten and is skipped, and so is one rewritten since (a memory of it was
deleted by id: ``Outbox.drop``), which the next round replays as it is now;
the stored ones leave the outbox under that lock.

Read-your-writes: ``wait_stored`` waits until a user's queued entries are
stored. While someone waits for a user, that user's entries are replayed
first, alone, at a query's priority.

Power cuts: a stored entry's row is deleted only after the store has
flushed it to disk (Qdrant Edge keeps new points in memory-mapped files,
which a power cut loses before the kernel writes them back). The entry
leaves the queue at once (``Outbox.settle``), and its row waits for the
next flush, which comes once ``FLUSH_INTERVAL_S`` after the oldest such
entry, once ``FLUSH_MAX_ROWS`` wait, when a ``drain`` ends, and at stop:
a flush costs ~23 ms with the event loop held, however little it writes
(bench/results/replay_flush.md), so one per chat turn would be too many.
A row still there after a crash replays again, idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from gateway.enums import ReplayOutcome
from gateway.exceptions import EmbedderRejected, EmbedderUnavailable, StoreUnavailable
from gateway.memory.embedder_client import BACKGROUND, INTERACTIVE
from gateway.memory.outbox import Outbox
from gateway.memory.outbox_rows import OutboxEntry
from gateway.memory.records import NewMemory, Scope
from gateway.metrics import GatewayMetrics
from gateway.monitor import next_backoff

logger = logging.getLogger("gateway.memory")

# A replay batch: up to this many outbox entries, and entries whose texts
# total at most this many characters (one entry of any size always goes). The
# embedder client splits a large call further and gives each part a timeout
# that grows with it (gateway.memory.embedder_client).
REPLAY_MAX_ENTRIES = 64
REPLAY_MAX_CHARS = 32_000
OUTAGES = (EmbedderUnavailable, StoreUnavailable)
# Stored rows are deleted after a store flush: at most this long after the first
# of them was stored, or as soon as this many wait (see the module docstring).
FLUSH_INTERVAL_S = 1.0
FLUSH_MAX_ROWS = 256

R = TypeVar("R")  # what a write answers for one entry
Batch = list[tuple[Scope, Sequence[NewMemory]]]


def _outbox_busy(exc: sqlite3.Error) -> None:
    """The outbox itself failed (locked by another process, an I/O error): an
    outage of the gateway's own disk, not the entries' fault. What was stored
    stays stored (ids are idempotent), the rows stay queued, and the drain is
    retried with backoff."""
    logger.warning("outbox replay paused, the outbox cannot be written: %s", exc)


class Claim:
    """The outbox rows behind a replayed batch, for its write to check and
    settle under the store lock that ``forget`` and ``delete`` also hold:
    ``still_queued`` just before storing (an entry purged since the batch was
    read belongs to a forgotten user and must be skipped; one rewritten since
    waits for the next round), ``stored`` right after (the stored entries
    leave the queue before forget can run again; their rows, after the next
    flush of the store)."""

    def __init__(self, outbox: Outbox, entries: Sequence[OutboxEntry]) -> None:
        self._outbox = outbox
        self._entries = entries
        self.kept: list[bool] | None = None  # set by still_queued

    def still_queued(self) -> list[bool]:
        kept: list[bool] = []
        behind: set[Scope] = set()  # users with an entry that does not go now
        for entry in self._entries:
            # After a skipped entry, the user's later ones wait too: a user's
            # entries are stored in order, each with the window of those before.
            keep = entry.scope not in behind and self._outbox.is_current(entry)
            if not keep:
                behind.add(entry.scope)
            kept.append(keep)
        self.kept = kept
        return kept

    @property
    def began_at(self) -> list[float]:
        """When each entry's request began (Unix time)."""
        return [entry.began_at for entry in self._entries]

    def stored(self) -> None:
        kept = self.kept if self.kept is not None else [True] * len(self._entries)
        self._outbox.settle([e.seq for e, k in zip(self._entries, kept, strict=True) if k])


class Replayer(Generic[R]):
    def __init__(
        self,
        outbox: Outbox,
        metrics: GatewayMetrics,
        *,
        write: Callable[[Batch, int, Claim], Awaitable[list[R]]],
        flush: Callable[[], Awaitable[None]],
        available: Callable[[], bool],
        report: Callable[[Exception], None],
        count: Callable[[Sequence[NewMemory], R], None],
        flush_interval_s: float = FLUSH_INTERVAL_S,
        flush_max_rows: int = FLUSH_MAX_ROWS,
    ) -> None:
        self._outbox = outbox
        self._metrics = metrics
        self._write = write
        self._flush = flush
        self._flush_interval_s = flush_interval_s
        self._flush_max_rows = flush_max_rows
        self._available = available
        self._report = report
        self._count = count
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Users someone waits for (a recall, an API write): replayed first.
        self._wanted: dict[Scope, int] = {}
        self._progress = asyncio.Condition()

    def start(self) -> None:
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._metrics.outbox_dead.set(self._outbox.dead)
        self._task = asyncio.create_task(self._forever(), name="outbox-replay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.settle()  # what was stored leaves the outbox (or replays at start)

    async def settle(self) -> bool:
        """Flush the store, then delete the rows of the entries stored before
        it; False if either failed (the rows stay, and would replay,
        idempotently, after a restart)."""
        seqs = self._outbox.unflushed()
        if not seqs:
            return True
        try:
            await self._flush()
            await self._outbox.done(sorted(seqs))
        except OUTAGES as exc:
            self._report(exc)
            return False
        except sqlite3.Error as exc:
            _outbox_busy(exc)
            return False
        return True

    def _flush_due(self) -> bool:
        count = self._outbox.unflushed_count()
        return count >= self._flush_max_rows or (
            count > 0 and self._outbox.unflushed_age() >= self._flush_interval_s
        )

    def wake(self) -> None:
        self._wake.set()

    async def wait_stored(self, scope: Scope, timeout_s: float) -> bool:
        """Wait until the user's entries queued now are stored (or set aside);
        False if some still wait after ``timeout_s``."""
        seqs = self._outbox.pending_seqs(scope)
        if not seqs:
            return True
        self._wanted[scope] = self._wanted.get(scope, 0) + 1
        self._wake.set()

        def stored() -> bool:
            return not any(self._outbox.is_pending(seq) for seq in seqs)

        try:
            async with self._progress, asyncio.timeout(timeout_s):
                await self._progress.wait_for(stored)
        except TimeoutError:
            self._metrics.read_your_writes_timeouts.inc()
            return False
        finally:
            self._wanted[scope] -= 1
            if self._wanted[scope] <= 0:
                del self._wanted[scope]
        return True

    async def progressed(self) -> None:
        """The outbox changed: update the gauges and wake whoever waits."""
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._metrics.outbox_dead.set(self._outbox.dead)
        async with self._progress:
            self._progress.notify_all()

    async def drain(self) -> int:
        """Replay queued entries until empty or blocked, then flush the store and
        delete the rows stored; return how many entries were applied."""
        applied = await self._drain()
        await self.settle()
        return applied

    async def _drain(self) -> int:
        applied = 0
        while self._available():
            if self._outbox.unflushed_count() >= self._flush_max_rows:
                await self.settle()
            entries = await self._outbox.head(
                REPLAY_MAX_ENTRIES, REPLAY_MAX_CHARS, first=list(self._wanted)
            )
            if not entries:
                break
            priority = BACKGROUND
            if self._wanted and entries[0].scope in self._wanted:
                # Someone waits for these (a recall, a write): they go alone and
                # at the priority of a query, not behind the embedder's bulk work.
                entries = [e for e in entries if e.scope in self._wanted]
                priority = INTERACTIVE
            claim = Claim(self._outbox, entries)
            try:
                results = await self._write(
                    [(e.scope, e.memories) for e in entries], priority, claim
                )
            except OUTAGES as exc:
                await self._retry_later(entries[0], exc)
                break
            except sqlite3.Error as exc:
                _outbox_busy(exc)
                break
            except Exception as exc:  # anything but an outage is about the entries
                if len(entries) > 1:
                    applied += await self._one_by_one(entries)
                    if not self._available():
                        break
                    continue
                await self._set_aside(entries[0], exc)
            else:
                applied += await self._settled(claim, entries, results)
            finally:
                await self.progressed()
        return applied

    async def _one_by_one(self, entries: Sequence[OutboxEntry]) -> int:
        """A batch failed, not for an outage: find the entries at fault, apply the others."""
        applied = 0
        for entry in entries:
            claim = Claim(self._outbox, [entry])
            try:
                results = await self._write([(entry.scope, entry.memories)], BACKGROUND, claim)
            except OUTAGES as exc:
                await self._retry_later(entry, exc)
                return applied
            except sqlite3.Error as exc:
                _outbox_busy(exc)
                return applied
            except Exception as exc:  # not an outage: this entry is at fault
                await self._set_aside(entry, exc)
                continue
            applied += await self._settled(claim, [entry], results)
        return applied

    async def _settled(
        self, claim: Claim, entries: Sequence[OutboxEntry], results: Sequence[R]
    ) -> int:
        """Count a written batch: the entries it stored (not those forgotten
        meanwhile). A write that never claimed the batch stored all of it."""
        if claim.kept is None:
            claim.stored()
        kept = claim.kept if claim.kept is not None else [True] * len(entries)
        applied = 0
        for entry, written, k in zip(entries, results, kept, strict=True):
            if k:
                self._replayed(entry, written)
                applied += 1
        return applied

    async def _retry_later(self, entry: OutboxEntry, exc: Exception) -> None:
        self._report(exc)
        await self._outbox.failed(entry.seq, str(exc))
        self._metrics.outbox_replays.labels(ReplayOutcome.RETRY).inc()

    async def _set_aside(self, entry: OutboxEntry, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, EmbedderRejected) else f"{type(exc).__name__}: {exc}"
        logger.error(
            "outbox entry %d (tenant %s) can never be stored, set aside: %s",
            entry.seq, entry.scope.tenant, reason,
        )  # fmt: skip
        await self._outbox.bury(entry.seq, reason[:2000])
        self._metrics.outbox_replays.labels(ReplayOutcome.DEAD).inc()

    def _replayed(self, entry: OutboxEntry, written: R) -> None:
        self._metrics.outbox_replays.labels(ReplayOutcome.SUCCESS).inc()
        self._count(entry.memories, written)

    async def _forever(self) -> None:
        delay = 0.0
        while True:
            self._wake.clear()
            settled = True
            try:
                await self._drain()
                if self._flush_due():
                    settled = await self.settle()
            except Exception:  # keep replaying whatever goes wrong once
                logger.exception("outbox replay failed")
                settled = False
            if self._outbox.depth == 0 and settled:
                delay = 0.0
                await self._wait(None)
                continue
            delay = next_backoff(delay, base_s=0.1, cap_s=5.0)
            # A flush that failed is tried again after the backoff, not at once.
            await self._wait(delay, flush_timer=settled)

    async def _wait(self, delay: float | None, *, flush_timer: bool = True) -> None:
        """Until woken, ``delay`` passes, or (``flush_timer``) the stored rows'
        flush is due."""
        if flush_timer and self._outbox.unflushed_count():
            due = max(0.0, self._flush_interval_s - self._outbox.unflushed_age())
            delay = due if delay is None else min(delay, due)
        if delay is None:
            await self._wake.wait()
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that comes just as the event is set, and this task then
        # ran on after stop() cancelled it, which waited for it for ever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
