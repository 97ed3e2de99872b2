"""The memory service: writes, searches and recalls, over a store and an embedder.

Writes take one of two paths. The memory API writes at once (one embedder
call for the whole batch, then one upsert) and answers 201; when the embedder
or the store is down, the batch goes to the durable outbox instead and the
API answers 202. With Qdrant Edge, whose writes reach the disk only when the
shard is flushed, a write at once is journaled in the outbox first, so a
power cut after its 201 loses nothing (gateway.memory.journal).
Memories from chat always go through the outbox: the relay
awaits the outbox write before the client can have the reply's end, so a
gateway killed right after answering still has them, and the replayer
stores them at once in the background.

Read-your-writes, within one gateway: the outbox knows which entries of each
user wait. A recall (or a search or a list of the memory API) for a user with
waiting entries asks the replayer to store that user's entries first and
waits for them (at most ``read_your_writes_s``); an API write for such a user
waits the same way, so it lands after them, in order. Other users' backlogs never hold a user up.

What can never be stored (the store cannot represent it, the embedder
rejects it) is refused up front where it can be known (gateway.memory.storable)
and otherwise set aside in the outbox's ``dead`` table by the replayer
(gateway.memory.replay) with its reason. Only outages (embedder or store
unavailable) are retried.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence

from gateway.enums import MemoryEvent, RecallOutcome, WriteOutcome, WriteSource
from gateway.exceptions import (
    EmbedderRejected,
    EmbedderUnavailable,
    MemoryRejected,
    MemoryUnavailable,
    OutboxRefused,
    StoreUnavailable,
)
from gateway.memory.embedder_client import INTERACTIVE, EmbedderClient
from gateway.memory.forgets import Forgotten
from gateway.memory.indexing import WINDOW, RecentTexts, VectorCache
from gateway.memory.journal import Journal
from gateway.memory.outbox import Outbox
from gateway.memory.outcomes import (
    AddOutcome,
    MemoryStatus,
    OutboxReport,
    per_memory,
    refusal,
    write_priority,
)
from gateway.memory.records import (
    Condition,
    MemoryRecord,
    NewMemory,
    Scope,
    dedupe_texts,
    memory_id,
)
from gateway.memory.replay import OUTAGES, Replayer
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.storable import unstorable_reason
from gateway.memory.store import QueryVectors, VectorStore
from gateway.memory.writes import Writer, WriteResult
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor

logger = logging.getLogger("gateway.memory")

ADD, NONE = MemoryEvent.ADD, MemoryEvent.NONE
# How long a recall (or an API write) waits for the user's own queued writes.
READ_YOUR_WRITES_S = 2.0


class MemoryService:
    def __init__(
        self,
        store: VectorStore,
        embedder: EmbedderClient,
        outbox: Outbox,
        metrics: GatewayMetrics,
        embedder_monitor: Monitor,
        store_monitor: Monitor,
        *,
        read_your_writes_s: float = READ_YOUR_WRITES_S,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._outbox = outbox
        self._metrics = metrics
        self._embedder_monitor = embedder_monitor
        self._store_monitor = store_monitor
        self._sparse = Bm25Encoder()
        self._recent = RecentTexts()
        self._vector_cache = VectorCache()
        self._read_your_writes_s = read_your_writes_s
        # Forget and delete remove under the writer's lock, which every write
        # stores under (gateway.memory.writes): no write embedded before a
        # removal stores the removed memories after it.
        self._writer = Writer(store, embedder, self._recent, self._vector_cache)
        self._replayer = Replayer(
            outbox, metrics,
            write=self._writer.write, flush=self._writer.flush, available=lambda: self.available,
            report=self._report, count=self._count_written,
        )  # fmt: skip
        self._journal = Journal(outbox, needed=store.needs_flush, wake=self._replayer.wake)

    @property
    def available(self) -> bool:
        return self._embedder_monitor.healthy and self._store_monitor.healthy

    # -- writes --------------------------------------------------------------

    async def add(self, scope: Scope, memories: Sequence[NewMemory]) -> AddOutcome:
        """Write now if possible, else queue durably. With Qdrant Edge, a write
        now is journaled in the outbox until the store has flushed it.

        Raises MemoryRejected (or EmbedderRejected) for what can never be
        stored, OutboxRefused (OutboxFull, OutboxUnavailable) when it had to
        queue and could not.
        """
        unique = dedupe_texts(memories)
        for memory in unique:
            reason = unstorable_reason(scope, memory)
            if reason is not None:
                raise MemoryRejected(reason)
        source = unique[0].source if unique else WriteSource.API
        if self.available and self._outbox.pending(scope):
            # Older writes of this user wait: they go first (order matters within a user).
            await self.wait_stored(scope, self._read_your_writes_s)
        if self.available and not self._outbox.pending(scope):
            results = await self._add_now(scope, unique)
            if results is not None:
                for result in results:
                    outcome = WriteOutcome.STORED if result.event == ADD else WriteOutcome.DUPLICATE
                    self._metrics.memory_writes.labels(source, outcome).inc()
                return AddOutcome(per_memory(memories, results), queued=False)
        else:
            await self.enqueue(scope, unique)
        results = [WriteResult(memory_id(scope, m.text), m.text, ADD) for m in unique]
        return AddOutcome(per_memory(memories, results), queued=True)

    async def _add_now(self, scope: Scope, unique: Sequence[NewMemory]) -> list[WriteResult] | None:
        """Store the memories now; None when an outage had them queued instead.
        Journaled first where the store needs it (gateway.memory.journal)."""
        try:
            row = await self._journal.open(scope, unique)
        except sqlite3.Error as exc:
            raise self._refused(unique, exc, scope.tenant) from exc
        try:
            results = await self.write_now(
                scope, unique, write_priority(unique), self._journal.on_stored(row)
            )
        except OUTAGES as exc:
            self._report(exc)
        except asyncio.CancelledError:
            self._journal.requeue(row, scope)
            raise
        except (EmbedderRejected, MemoryRejected):
            await self._journal.drop(row)
            raise
        except Exception as exc:  # the store cannot take it: a client error
            logger.warning("memory write for %s refused: %r", scope.tenant, exc)
            await self._journal.drop(row)
            raise MemoryRejected(f"{type(exc).__name__}: {exc}") from exc
        else:
            self._journal.stored(row)
            return results
        if row is None:
            await self.enqueue(scope, unique)
        else:
            self._journal.requeue(row, scope)
            self._queued(unique)
        return None

    async def enqueue(
        self, scope: Scope, memories: Sequence[NewMemory], since: float | None = None
    ) -> None:
        """Put the memories in the durable outbox (committed when this returns).

        ``since``: when the request behind them began (``time.perf_counter``);
        a chat turn passes its start. If the user was forgotten after that,
        nothing is stored: the turn read memories the forget removed, and its
        exchange must not bring them back (counted, not an error)."""
        if not memories:
            return
        try:
            await self._outbox.put(scope, memories, since)
        except Forgotten:
            logger.info(
                "%d memories of tenant %s not stored: their user was forgotten during the turn",
                len(memories), scope.tenant,
            )  # fmt: skip
            self._metrics.memory_writes.labels(memories[0].source, WriteOutcome.FORGOTTEN).inc(
                len(memories)
            )
            return
        except sqlite3.Error as exc:  # SQLITE_FULL, an I/O error, a read-only file
            raise self._refused(memories, exc, scope.tenant) from exc
        self._queued(memories)

    def _queued(self, memories: Sequence[NewMemory]) -> None:
        self._metrics.memory_writes.labels(memories[0].source, WriteOutcome.QUEUED).inc(
            len(memories)
        )
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._replayer.wake()

    def _refused(
        self, memories: Sequence[NewMemory], exc: sqlite3.Error, tenant: str
    ) -> OutboxRefused:
        """The operator's one line, and the client's answer (gateway.memory.outcomes)."""
        logger.error(
            "%d memories of tenant %s not accepted, the outbox cannot take them: %s",
            len(memories), tenant, exc,
        )  # fmt: skip
        self._metrics.memory_writes.labels(memories[0].source, WriteOutcome.FAILED).inc(
            len(memories)
        )
        return refusal(exc)

    @staticmethod
    def _removal_refused(exc: sqlite3.Error, action: str, tenant: str) -> OutboxRefused:
        """A forget or a delete whose outbox rows cannot be removed: the client
        is told to retry (507 for a full disk, else 503), never a 500."""
        logger.error("cannot %s of tenant %s, the outbox cannot be written: %s",
                     action, tenant, exc)  # fmt: skip
        return refusal(exc, action)

    async def write_now(
        self,
        scope: Scope,
        memories: Sequence[NewMemory],
        priority: int = INTERACTIVE,
        on_stored: Callable[[], None] | None = None,
    ) -> list[WriteResult]:
        """Embed and store the memories not stored yet, in one embedder call
        (``on_stored``: gateway.memory.writes.Writer.write)."""
        [results] = await self._writer.write([(scope, memories)], priority, on_stored=on_stored)
        return results

    async def forget(self, scope: Scope) -> int:
        """Delete a user's memories, queued ones included, so replay cannot revive
        them; how many distinct memories went.

        Under the store lock, so that no write embedded before it stores
        after it (gateway.memory.writes)."""
        async with self._writer.lock:
            # First, for the other gateways on a shared store: their writes of
            # this user, begun before now, are deleted again (gateway.memory.writes).
            await self._store.note_forget(scope, time.time())
            try:
                queued = await self._outbox.purge(scope)
            except sqlite3.Error as exc:  # a full disk, a lock: nothing was removed
                raise self._removal_refused(exc, "forget the user", scope.tenant) from exc
            self._writer.removed(scope)
            self._recent.forget(scope.tenant, scope.user_id)
            self._vector_cache.clear()
            # A queued memory may be a text the user has stored already: count it once.
            also_stored = await self._store.existing_ids(scope, sorted(queued)) if queued else set()
            deleted = await self._store.delete_scope(scope)
            # On disk before the answer: a power cut after "forgotten" must not
            # bring the memories back (a flush is tens of ms; forgets are rare).
            await self._store.flush()
        await self._replayer.progressed()
        return deleted + len(queued - also_stored)

    async def delete(self, tenant: str, memory_id: str, user_id: str | None = None) -> bool:
        """Delete a memory of the tenant (of ``user_id``'s, when given), stored or
        still queued; False when there is none.

        Under the store lock, like ``forget``: a replay that read the queued
        memory before stores its batch without it (``Claim``)."""
        async with self._writer.lock:
            record = await self._store.get(tenant, memory_id)
            if record is not None and user_id is not None and record.user_id != user_id:
                record = None
            try:
                owner = await self._outbox.drop(tenant, memory_id, user_id)
            except sqlite3.Error as exc:  # as in forget: nothing was removed
                raise self._removal_refused(exc, "delete the memory", tenant) from exc
            if record is not None:
                owner = record.user_id
                scope = Scope(tenant, owner)
                gap = await self._store.neighbours(scope, memory_id, WINDOW)
                await self._store.delete(scope, memory_id)
                if gap is not None:  # the next memories' windows without it
                    await self._writer.close_gap(scope, gap)
                await self._store.flush()  # durable before the answer, as forget
            if owner is not None:
                # The text may sit in a cached session window (and in one a direct
                # write in flight read): later writes read their window again.
                self._recent.forget(tenant, owner)
                self._writer.removed(Scope(tenant, owner))
        await self._replayer.progressed()
        return owner is not None

    # -- reads ---------------------------------------------------------------

    async def page(
        self, scope: Scope, limit: int, cursor: str | None
    ) -> tuple[list[MemoryRecord], str | None]:
        """A page of the user's memories, and the cursor of the next (None: the
        last); the user's queued writes are stored first (``_own_writes_first``)."""
        await self._own_writes_first(scope)
        return await self._store.list(scope, limit, cursor)

    async def _own_writes_first(self, scope: Scope) -> None:
        """Read-your-writes: a user's writes still queued (their last chat turns,
        usually) are stored before a read of their memories, waiting at most
        ``read_your_writes_s``. Not while a dependency is down: they could not be."""
        if self.available and self._outbox.pending(scope):
            await self.wait_stored(scope, self._read_your_writes_s)

    async def get(
        self, tenant: str, memory_id: str, user_id: str | None = None
    ) -> MemoryRecord | None:
        """A memory by id, stored or still queued, only when it belongs to
        ``tenant`` (and to ``user_id``, when given)."""
        record = await self._store.get(tenant, memory_id)
        if record is not None and (user_id is None or record.user_id == user_id):
            return record
        if self._outbox.depth == 0:
            return None
        return await self._outbox.find(tenant, memory_id, user_id)

    async def users(self, tenant: str, limit: int) -> list[str]:
        """The user ids of a tenant that have memories (admin)."""
        return await self._store.users(tenant, limit)

    async def search(
        self,
        scope: Scope,
        query: str,
        limit: int,
        conditions: Sequence[Condition] = (),
        min_score: float | None = None,
    ) -> list[MemoryRecord]:
        # Known down: answer 503 now rather than hold the request (and its concurrency
        # slot) for a whole embedder timeout; the monitors' probes notice the return.
        if not self.available:
            raise MemoryUnavailable("memory dependencies are down")
        await self._own_writes_first(scope)
        return await self._search_now(scope, query, limit, conditions, min_score)

    async def _search_now(
        self,
        scope: Scope,
        query: str,
        limit: int,
        conditions: Sequence[Condition] = (),
        min_score: float | None = None,
    ) -> list[MemoryRecord]:
        """``search`` once the user's own queued writes were waited for."""
        try:
            [vector] = await self._embedder.embed([query])
            self._vector_cache.put(query, vector)  # a chat turn stores this text next
            vectors = QueryVectors(vector, self._sparse.query(query))
            return await self._store.search(scope, vectors, limit, conditions, min_score)
        except (EmbedderUnavailable, StoreUnavailable) as exc:
            self._report(exc)
            raise MemoryUnavailable(str(exc)) from exc

    async def recall(
        self, scope: Scope, query: str, limit: int, min_score: float
    ) -> list[MemoryRecord]:
        """Memories for a chat turn. Raises MemoryUnavailable when degraded."""
        if not self.available:
            self._metrics.recalls.labels(RecallOutcome.DEGRADED).inc()
            raise MemoryUnavailable("memory dependencies are down")
        await self._own_writes_first(scope)  # the user's last turns, if not stored yet
        started = time.perf_counter()
        try:  # waited for already: the search must not wait a second time
            records = await self._search_now(scope, query, limit, (), min_score)
        except MemoryUnavailable:
            self._metrics.recalls.labels(RecallOutcome.DEGRADED).inc()
            raise
        self._metrics.recall_duration.observe(time.perf_counter() - started)
        # recall_hits is observed where the memories go in (gateway.api.memory_fit).
        self._metrics.recalls.labels(RecallOutcome.HIT if records else RecallOutcome.MISS).inc()
        return records

    def _report(self, exc: Exception) -> None:
        monitor = self._embedder_monitor if isinstance(exc, EmbedderUnavailable) else None
        monitor = monitor or self._store_monitor
        monitor.report_failure(str(exc))

    # -- state ---------------------------------------------------------------

    def status(self) -> MemoryStatus:
        return MemoryStatus(
            self._embedder_monitor, self._store_monitor, self._store.name, self._outbox.depth
        )

    def outbox_lost(self) -> str | None:
        """Why the outbox's file is no longer the data dir's (removed under the
        running gateway), or None (gateway.memory.outbox.Outbox.lost)."""
        return self._outbox.lost()

    async def outbox_report(self, dead_limit: int) -> OutboxReport:
        """The outbox's depth and its dead entries, the latest ``dead_limit`` of them."""
        entries = await asyncio.to_thread(self._outbox.dead_entries, dead_limit)
        dead = await asyncio.to_thread(self._outbox.dead_count)
        return OutboxReport(self._outbox.depth, dead, entries)

    # -- outbox replay (gateway.memory.replay) -------------------------------

    def start_replayer(self) -> None:
        self._replayer.start()

    async def stop_replayer(self) -> None:
        await self._replayer.stop()

    def wake_replayer(self) -> None:
        self._replayer.wake()

    async def drain(self) -> int:
        """Replay queued entries until empty or blocked; return how many were applied."""
        return await self._replayer.drain()

    async def wait_stored(self, scope: Scope, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until the user's queued writes are stored."""
        return await self._replayer.wait_stored(scope, timeout_s)

    def _count_written(self, memories: Sequence[NewMemory], written: list[WriteResult]) -> None:
        for result, memory in zip(written, memories, strict=True):
            outcome = WriteOutcome.STORED if result.event == ADD else WriteOutcome.DUPLICATE
            self._metrics.memory_writes.labels(memory.source, outcome).inc()
