"""The memory service: writes, searches and recalls, over a store and an embedder.

Writes take one of two paths. The memory API writes at once (one embedder
call for the whole batch, then one upsert) and answers 201; when the embedder
or the store is down, or older writes are still queued, the batch goes to the
durable outbox instead and the API answers 202. Memories from chat always go
through the outbox: it is written before the background store starts, so a
gateway killed right after answering still has them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.memory.embedder_client import (
    BACKGROUND,
    INTERACTIVE,
    EmbedderClient,
    EmbedderRejected,
    EmbedderUnavailable,
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
from gateway.memory.outbox import Outbox, OutboxEntry
from gateway.memory.records import (
    Condition,
    MemoryRecord,
    NewMemory,
    Scope,
    dedupe_texts,
    memory_id,
)
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.store import (
    PointVectors,
    QueryVectors,
    StoredPoint,
    StoreUnavailable,
    VectorStore,
)
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor, next_backoff

logger = logging.getLogger("gateway.memory")

ADD, NONE = "ADD", "NONE"
REPLAY_BATCH = 16  # outbox entries per embedder call when replaying


class MemoryUnavailable(Exception):
    """Memory cannot be read right now: the embedder or the vector store is down."""


@dataclass(frozen=True)
class WriteResult:
    id: str
    memory: str
    event: str  # ADD: new; NONE: this text was already stored for the user


@dataclass(frozen=True)
class AddOutcome:
    results: list[WriteResult]
    queued: bool


class MemoryService:
    def __init__(
        self,
        store: VectorStore,
        embedder: EmbedderClient,
        outbox: Outbox,
        metrics: GatewayMetrics,
        embedder_monitor: Monitor,
        store_monitor: Monitor,
    ) -> None:
        self.store = store
        self._embedder = embedder
        self._outbox = outbox
        self._metrics = metrics
        self._embedder_monitor = embedder_monitor
        self._store_monitor = store_monitor
        self._sparse = Bm25Encoder()
        self._recent = RecentTexts()
        self._vector_cache = VectorCache()
        self._replay_wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return self._embedder_monitor.healthy and self._store_monitor.healthy

    # -- writes --------------------------------------------------------------

    async def add(self, scope: Scope, memories: Sequence[NewMemory]) -> AddOutcome:
        """Write now if possible, else queue durably. Raises EmbedderRejected on bad input."""
        unique = dedupe_texts(memories)
        source = unique[0].source if unique else "api"
        if self.available and self._outbox.depth == 0:
            try:
                results = await self.write_now(scope, unique)
            except (EmbedderUnavailable, StoreUnavailable) as exc:
                self._report(exc)
            else:
                for result in results:
                    outcome = "stored" if result.event == ADD else "duplicate"
                    self._metrics.memory_writes.labels(source, outcome).inc()
                return AddOutcome(results, queued=False)
        await self.enqueue(scope, unique)
        results = [WriteResult(memory_id(scope, m.text), m.text, ADD) for m in unique]
        return AddOutcome(results, queued=True)

    async def enqueue(self, scope: Scope, memories: Sequence[NewMemory]) -> None:
        if not memories:
            return
        await self._outbox.put(scope, memories)
        self._metrics.memory_writes.labels(memories[0].source, "queued").inc(len(memories))
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._replay_wake.set()

    async def write_now(
        self, scope: Scope, memories: Sequence[NewMemory], priority: int = INTERACTIVE
    ) -> list[WriteResult]:
        """Embed and store the memories not stored yet, in one embedder call."""
        [results] = await self.write_batches([(scope, memories)], priority)
        return results

    async def write_batches(
        self, batches: Sequence[tuple[Scope, Sequence[NewMemory]]], priority: int = INTERACTIVE
    ) -> list[list[WriteResult]]:
        """Several writes (of one or more users) with one embedder call for all.

        Each memory is indexed with its session's previous memories
        (gateway.memory.indexing); writes to one session are expected in order,
        as the outbox replays them.
        """
        windows: dict[SessionKey, list[Recent]] = {}
        plans: list[tuple[Scope, list[tuple[str, NewMemory, IndexTexts, list[Recent]]]]] = []
        results: list[list[WriteResult]] = []
        for scope, memories in batches:
            ids = [memory_id(scope, m.text) for m in memories]
            existing = await self.store.existing_ids(scope, ids) if ids else set()
            fresh = []
            for point_id, memory in zip(ids, memories, strict=True):
                if point_id in existing:
                    continue
                key = session_key(scope, memory.session_id)
                if key not in windows:
                    cached = self._recent.get(key)
                    if cached is None:
                        texts = await self.store.recent(scope, memory.session_id, WINDOW)
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
        if not texts:
            return results
        vectors = await self._embed_once(texts, priority)
        written_at = time.time_ns()
        for scope, fresh in plans:
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
                await self.store.upsert(scope, points)
        for key, recent in windows.items():
            self._recent.put(key, [(t, v if v is not None else vectors[t]) for t, v in recent])
        return results

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
        """Delete a user's memories, queued ones included, so replay cannot revive them."""
        purged = await self._outbox.purge(scope)
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._recent.forget(scope.tenant, scope.user_id)
        self._vector_cache.clear()
        return purged + await self.store.delete_scope(scope)

    # -- reads ---------------------------------------------------------------

    async def search(
        self,
        scope: Scope,
        query: str,
        limit: int,
        conditions: Sequence[Condition] = (),
        min_score: float | None = None,
    ) -> list[MemoryRecord]:
        try:
            [vector] = await self._embedder.embed([query])
            self._vector_cache.put(query, vector)  # a chat turn stores this text next
            vectors = QueryVectors(vector, self._sparse.query(query))
            return await self.store.search(scope, vectors, limit, conditions, min_score)
        except (EmbedderUnavailable, StoreUnavailable) as exc:
            self._report(exc)
            raise MemoryUnavailable(str(exc)) from exc

    async def recall(
        self, scope: Scope, query: str, limit: int, min_score: float
    ) -> list[MemoryRecord]:
        """Memories for a chat turn. Raises MemoryUnavailable when degraded."""
        if not self.available:
            self._metrics.recalls.labels("degraded").inc()
            raise MemoryUnavailable("memory dependencies are down")
        started = time.perf_counter()
        try:
            records = await self.search(scope, query, limit, (), min_score)
        except MemoryUnavailable:
            self._metrics.recalls.labels("degraded").inc()
            raise
        self._metrics.recall_duration.observe(time.perf_counter() - started)
        self._metrics.recall_hits.observe(len(records))
        self._metrics.recalls.labels("hit" if records else "miss").inc()
        return records

    def _report(self, exc: Exception) -> None:
        monitor = self._embedder_monitor if isinstance(exc, EmbedderUnavailable) else None
        monitor = monitor or self._store_monitor
        monitor.report_failure(str(exc))

    # -- outbox replay -------------------------------------------------------

    def start_replayer(self) -> None:
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._replayer = asyncio.create_task(self._replay_forever(), name="outbox-replay")

    async def stop_replayer(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)

    def wake_replayer(self) -> None:
        self._replay_wake.set()

    async def drain(self) -> int:
        """Replay queued entries until empty or blocked; return how many were applied.

        Up to REPLAY_BATCH entries at a time share one embedder call, so a backlog
        drains at the embedder's batch speed, not one round trip per entry. The
        call goes at background priority: queries of chat turns overtake it.
        """
        applied = 0
        while self.available:
            entries = await self._outbox.head(REPLAY_BATCH)
            if not entries:
                break
            try:
                batches = [(e.scope, e.memories) for e in entries]
                results = await self.write_batches(batches, BACKGROUND)
            except (EmbedderUnavailable, StoreUnavailable) as exc:
                self._report(exc)
                await self._outbox.failed(entries[0].seq, str(exc))
                self._metrics.outbox_replays.labels("retry").inc()
                break
            except EmbedderRejected as exc:
                if len(entries) > 1:
                    applied += await self._drain_one_by_one(entries)
                    continue
                logger.error("outbox entry %d rejected by the embedder: %s", entries[0].seq, exc)
                await self._outbox.bury(entries[0].seq, str(exc))
                self._metrics.outbox_replays.labels("dead").inc()
            else:
                await self._outbox.done([e.seq for e in entries])
                for entry, written in zip(entries, results, strict=True):
                    self._count_replayed(entry.memories, written)
                applied += len(entries)
            finally:
                self._metrics.outbox_depth.set(self._outbox.depth)
        return applied

    async def _drain_one_by_one(self, entries: Sequence[OutboxEntry]) -> int:
        """A batch was rejected: find the entry that is, and apply the others."""
        applied = 0
        for entry in entries:
            try:
                written = await self.write_now(entry.scope, entry.memories, BACKGROUND)
            except EmbedderRejected as exc:
                logger.error("outbox entry %d rejected by the embedder: %s", entry.seq, exc)
                await self._outbox.bury(entry.seq, str(exc))
                self._metrics.outbox_replays.labels("dead").inc()
                continue
            await self._outbox.done([entry.seq])
            self._count_replayed(entry.memories, written)
            applied += 1
        return applied

    def _count_replayed(self, memories: Sequence[NewMemory], written: list[WriteResult]) -> None:
        self._metrics.outbox_replays.labels("success").inc()
        for result, memory in zip(written, memories, strict=True):
            outcome = "stored" if result.event == ADD else "duplicate"
            self._metrics.memory_writes.labels(memory.source, outcome).inc()

    async def _replay_forever(self) -> None:
        delay = 0.0
        while True:
            self._replay_wake.clear()
            try:
                await self.drain()
            except Exception:  # keep replaying whatever goes wrong once
                logger.exception("outbox replay failed")
            if self._outbox.depth == 0:
                delay = 0.0
                await self._replay_wake.wait()
                continue
            delay = next_backoff(delay, base_s=0.1, cap_s=5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._replay_wake.wait(), delay)
