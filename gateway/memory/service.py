"""The memory service: writes, searches and recalls, over a store and an embedder.

Writes take one of two paths. The memory API writes at once (one embedder
call for the whole batch, then one upsert) and answers 201; when the embedder
or the store is down, the batch goes to the durable outbox instead and the
API answers 202. Memories from chat always go through the outbox: the relay
awaits the outbox write before the client can have the reply's end, so a
gateway killed right after answering still has them, and the replayer
stores them at once in the background.

Read-your-writes, within one gateway: the outbox knows which entries of each
user wait. A recall for a user with waiting entries asks the replayer to
store that user's entries first and waits for them (at most
``read_your_writes_s``); an API write for such a user waits the same way, so
it lands after them, in order. Other users' backlogs never hold a user up.

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
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.enums import MemoryEvent, RecallOutcome, WriteOutcome, WriteSource
from gateway.exceptions import (
    EmbedderRejected,
    EmbedderUnavailable,
    MemoryRejected,
    MemoryUnavailable,
    OutboxFull,
    StoreUnavailable,
)
from gateway.memory.embedder_client import (
    BACKGROUND,
    INTERACTIVE,
    PART_TEXTS,
    EmbedderClient,
)
from gateway.memory.indexing import (
    WINDOW,
    IndexTexts,
    Recent,
    RecentTexts,
    SessionKey,
    VectorCache,
    compose,
    index_texts,
    session_key,
)
from gateway.memory.outbox import DeadEntry, Outbox
from gateway.memory.records import (
    Condition,
    MemoryRecord,
    NewMemory,
    Scope,
    dedupe_texts,
    memory_id,
)
from gateway.memory.replay import OUTAGES, Claim, Replayer
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.storable import unstorable_reason
from gateway.memory.store import (
    PointVectors,
    QueryVectors,
    StoredPoint,
    VectorStore,
)
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor

logger = logging.getLogger("gateway.memory")

ADD, NONE = MemoryEvent.ADD, MemoryEvent.NONE
# How long a recall (or an API write) waits for the user's own queued writes.
READ_YOUR_WRITES_S = 2.0


@dataclass(frozen=True)
class WriteResult:
    id: str
    memory: str
    event: MemoryEvent  # ADD: new; NONE: this text was already stored for the user


@dataclass(frozen=True)
class MemoryStatus:
    """The memory side's state for ``/readyz``: each dependency's monitor, the
    store's kind, and how many writes wait in the outbox."""

    embedder: Monitor
    store: Monitor
    backend: str
    outbox_depth: int

    @property
    def ready(self) -> bool:
        return self.embedder.healthy and self.store.healthy


@dataclass(frozen=True)
class OutboxReport:
    """Writes waiting, and those set aside because they can never be stored
    (``dead``: how many; ``dead_entries``: the latest, with their reasons)."""

    depth: int
    dead: int
    dead_entries: list[DeadEntry]


@dataclass(frozen=True)
class AddOutcome:
    results: list[WriteResult]
    queued: bool


class _Watch:
    """A direct write in flight: the users forgotten since it began."""

    def __init__(self) -> None:
        self.forgotten: set[Scope] = set()


@dataclass(frozen=True)
class _Plan:
    """A prepared write (``MemoryService._prepare``): per batch its new points'
    ids, memories, index texts and windows; the windows to cache; the vectors."""

    plans: list[tuple[Scope, list[tuple[str, NewMemory, IndexTexts, list[Recent]]]]]
    windows: dict[SessionKey, list[Recent]]
    vectors: dict[str, list[float]]
    results: list[list[WriteResult]]


def _write_priority(memories: Sequence[NewMemory]) -> int:
    """A bulk write (more texts than one embedder request carries: two per
    memory) goes at background priority, so chat queries overtake it at the
    embedder; an ordinary write goes at a query's."""
    return BACKGROUND if 2 * len(memories) > PART_TEXTS else INTERACTIVE


def _per_memory(memories: Sequence[NewMemory], unique: Sequence[WriteResult]) -> list[WriteResult]:
    """One result per memory given, in order (so a client can pair them with its
    messages): a text repeated within the batch is one memory, ``NONE`` after
    its first time."""
    by_text = {result.memory: result for result in unique}
    seen: set[str] = set()
    results = []
    for memory in memories:
        result = by_text[memory.text]
        results.append(
            result if memory.text not in seen else WriteResult(result.id, result.memory, NONE)
        )
        seen.add(memory.text)
    return results


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
        # Forget vs. writes: forget purges the outbox and deletes the store
        # under this lock, and every write stores (and the replayer settles
        # its outbox rows) under it, after its embedder call, which is made
        # without it. So a write whose vectors come back after a forget sees
        # that forget (Claim.still_queued, _Watch) and does not revive the user.
        self._store_lock = asyncio.Lock()
        self._watches: set[_Watch] = set()  # direct writes in flight
        self._replayer = Replayer(
            outbox, metrics,
            write=self.write_batches, available=lambda: self.available,
            report=self._report, count=self._count_written,
        )  # fmt: skip

    @property
    def available(self) -> bool:
        return self._embedder_monitor.healthy and self._store_monitor.healthy

    # -- writes --------------------------------------------------------------

    async def add(self, scope: Scope, memories: Sequence[NewMemory]) -> AddOutcome:
        """Write now if possible, else queue durably.

        Raises MemoryRejected (or EmbedderRejected) for what can never be
        stored, OutboxFull when it had to queue and could not.
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
            try:
                results = await self.write_now(scope, unique, _write_priority(unique))
            except OUTAGES as exc:
                self._report(exc)
            except EmbedderRejected:
                raise
            except Exception as exc:  # the store cannot take it: a client error
                logger.warning("memory write for %s refused: %r", scope.tenant, exc)
                raise MemoryRejected(f"{type(exc).__name__}: {exc}") from exc
            else:
                for result in results:
                    outcome = WriteOutcome.STORED if result.event == ADD else WriteOutcome.DUPLICATE
                    self._metrics.memory_writes.labels(source, outcome).inc()
                return AddOutcome(_per_memory(memories, results), queued=False)
        await self.enqueue(scope, unique)
        results = [WriteResult(memory_id(scope, m.text), m.text, ADD) for m in unique]
        return AddOutcome(_per_memory(memories, results), queued=True)

    async def enqueue(self, scope: Scope, memories: Sequence[NewMemory]) -> None:
        """Put the memories in the durable outbox (committed when this returns)."""
        if not memories:
            return
        try:
            await self._outbox.put(scope, memories)
        except sqlite3.Error as exc:  # SQLITE_FULL, an I/O error, a read-only file
            # The operator's one line (the client gets 507, or a chat reply
            # marked x-memory-status: not_stored).
            logger.error(
                "%d memories of tenant %s not accepted, the outbox cannot take them: %s",
                len(memories), scope.tenant, exc,
            )  # fmt: skip
            self._metrics.memory_writes.labels(memories[0].source, WriteOutcome.FAILED).inc(
                len(memories)
            )
            raise OutboxFull(f"the outbox cannot take the write: {exc}") from exc
        self._metrics.memory_writes.labels(memories[0].source, WriteOutcome.QUEUED).inc(
            len(memories)
        )
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._replayer.wake()

    async def write_now(
        self, scope: Scope, memories: Sequence[NewMemory], priority: int = INTERACTIVE
    ) -> list[WriteResult]:
        """Embed and store the memories not stored yet, in one embedder call."""
        [results] = await self.write_batches([(scope, memories)], priority)
        return results

    async def write_batches(
        self,
        batches: Sequence[tuple[Scope, Sequence[NewMemory]]],
        priority: int = INTERACTIVE,
        claim: Claim | None = None,
    ) -> list[list[WriteResult]]:
        """Several writes (of one or more users) with one embedder call for all.

        Each memory is indexed with its session's previous memories
        (gateway.memory.indexing); writes to one session are expected in order,
        as the outbox replays them.

        The replayer passes the ``claim`` of its outbox rows: a batch whose row
        was purged (its user forgotten) while this waited on the embedder is
        not stored. A direct write (no claim) whose user was forgotten
        meanwhile starts over: its windows and duplicate checks were read
        before the forget and may hold the forgotten memories' texts.
        """
        while True:
            watch = _Watch()
            self._watches.add(watch)
            try:
                plan = await self._prepare(batches, priority)
                async with self._store_lock:
                    if claim is not None:
                        keep = claim.still_queued()
                    elif watch.forgotten & {scope for scope, _ in batches}:
                        continue  # forgotten meanwhile: as a write after the forget
                    else:
                        keep = [True] * len(batches)
                    await self._store_prepared(plan, keep)
                    if claim is not None:
                        await claim.stored()
                    return plan.results
            finally:
                self._watches.discard(watch)

    async def _prepare(
        self, batches: Sequence[tuple[Scope, Sequence[NewMemory]]], priority: int
    ) -> _Plan:
        """What to store: the points' texts and windows, their vectors (the
        embedder call), and the results."""
        windows: dict[SessionKey, list[Recent]] = {}
        plans: list[tuple[Scope, list[tuple[str, NewMemory, IndexTexts, list[Recent]]]]] = []
        results: list[list[WriteResult]] = []
        for scope, memories in batches:
            ids = [memory_id(scope, m.text) for m in memories]
            existing = await self._store.existing_ids(scope, ids) if ids else set()
            fresh = []
            for point_id, memory in zip(ids, memories, strict=True):
                if point_id in existing:
                    continue
                key = session_key(scope, memory.session_id)
                if key not in windows:
                    cached = self._recent.get(key)
                    if cached is None:
                        texts = await self._store.recent(scope, memory.session_id, WINDOW)
                        cached = [(text, None) for text in texts]
                    windows[key] = cached
                previous = windows[key]
                it = index_texts(memory, [text for text, _ in previous])
                fresh.append((point_id, memory, it, previous))
                windows[key] = [*previous, (memory.text, None)][-WINDOW:]
            plans.append((scope, fresh))
            results.append(
                [
                    WriteResult(i, m.text, NONE if i in existing else ADD)
                    for i, m in zip(ids, memories, strict=True)
                ]
            )
        texts = [it.dense for _, fresh in plans for _, _, it, _ in fresh]
        texts += [t for _, fresh in plans for *_, prev in fresh for t, v in prev if v is None]
        vectors = await self._embed_once(texts, priority) if texts else {}
        return _Plan(plans, windows, vectors, results)

    async def _store_prepared(self, plan: _Plan, keep: Sequence[bool]) -> None:
        """Store the batches of ``plan`` that ``keep`` says (under the store lock)."""
        vectors, windows = plan.vectors, plan.windows
        skipped = {scope for (scope, _), k in zip(plan.plans, keep, strict=True) if not k}
        written_at = time.time_ns()
        for (scope, fresh), k in zip(plan.plans, keep, strict=True):
            if not k:
                continue
            points = []
            for point_id, memory, it, previous in fresh:
                window = [(t, v if v is not None else vectors[t]) for t, v in previous]
                own = vectors[it.dense]
                vectors_ = PointVectors(
                    own,
                    compose([*window, (it.dense, own)]),
                    self._sparse.document(it.sparse_text),
                    self._sparse.document(it.sparse_context),
                )
                points.append(StoredPoint(point_id, vectors_, memory, written_at))
                written_at += 1
            if points:
                await self._store.upsert(scope, points)
        for key, recent in windows.items():
            if Scope(key[0], key[1]) in skipped:
                continue  # a forgotten user's texts stay out of the cache
            self._recent.put(key, [(t, v if v is not None else vectors[t]) for t, v in recent])

    async def _embed_once(self, texts: Sequence[str], priority: int) -> dict[str, list[float]]:
        """Vectors of ``texts``: each distinct text embedded once, none that a
        recent query embedded already (``VectorCache``)."""
        vectors: dict[str, list[float]] = {}
        for text in texts:
            if text not in vectors and (cached := self._vector_cache.get(text)) is not None:
                vectors[text] = cached
        missing = list(dict.fromkeys(t for t in texts if t not in vectors))
        if missing:
            embedded = await self._embedder.embed(missing, priority=priority)
            vectors.update(zip(missing, embedded, strict=True))
        return vectors

    async def forget(self, scope: Scope) -> int:
        """Delete a user's memories, queued ones included, so replay cannot revive
        them; how many distinct memories went.

        Under the store lock, so that no write embedded before it stores
        after it (see ``write_batches``)."""
        async with self._store_lock:
            queued = await self._outbox.purge(scope)
            for watch in self._watches:
                watch.forgotten.add(scope)
            self._recent.forget(scope.tenant, scope.user_id)
            self._vector_cache.clear()
            # A queued memory may be a text the user has stored already: count it once.
            also_stored = await self._store.existing_ids(scope, sorted(queued)) if queued else set()
            deleted = await self._store.delete_scope(scope)
        await self._replayer.progressed()
        return deleted + len(queued - also_stored)

    async def delete(self, tenant: str, memory_id: str, user_id: str | None = None) -> bool:
        """Delete a memory of the tenant (of ``user_id``'s, when given), stored or
        still queued; False when there is none.

        Under the store lock, like ``forget``: a replay that read the queued
        memory before stores its batch without it (``Claim``)."""
        async with self._store_lock:
            record = await self._store.get(tenant, memory_id)
            if record is not None and user_id is not None and record.user_id != user_id:
                record = None
            owner = await self._outbox.drop(tenant, memory_id, user_id)
            if record is not None:
                owner = record.user_id
                await self._store.delete(Scope(tenant, owner), memory_id)
            if owner is not None:
                # The text may sit in a cached session window: later writes of the
                # session read their window from the store again.
                self._recent.forget(tenant, owner)
        await self._replayer.progressed()
        return owner is not None

    # -- reads ---------------------------------------------------------------

    async def page(
        self, scope: Scope, limit: int, cursor: str | None
    ) -> tuple[list[MemoryRecord], str | None]:
        """A page of the user's memories, and the cursor of the next (None: the last)."""
        return await self._store.list(scope, limit, cursor)

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
        if self._outbox.pending(scope):
            # The user's last turns may not be stored yet: read them first.
            await self.wait_stored(scope, self._read_your_writes_s)
        started = time.perf_counter()
        try:
            records = await self.search(scope, query, limit, (), min_score)
        except MemoryUnavailable:
            self._metrics.recalls.labels(RecallOutcome.DEGRADED).inc()
            raise
        self._metrics.recall_duration.observe(time.perf_counter() - started)
        self._metrics.recall_hits.observe(len(records))
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
