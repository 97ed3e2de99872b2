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
rejects it) is refused up front where it can be known (``check_storable``)
and otherwise set aside in the outbox's ``dead`` table by the replayer with
its reason. Only outages (embedder or store unavailable) are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
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
from gateway.memory.storable import unstorable_reason
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
# A replay batch: up to this many outbox entries, and entries whose texts
# total at most this many characters (one entry of any size always goes). The
# embedder client splits a large call further and gives each part a timeout
# that grows with it (gateway.memory.embedder_client).
REPLAY_MAX_ENTRIES = 64
REPLAY_MAX_CHARS = 32_000
# How long a recall (or an API write) waits for the user's own queued writes.
READ_YOUR_WRITES_S = 2.0
OUTAGES = (EmbedderUnavailable, StoreUnavailable)


class MemoryUnavailable(Exception):
    """Memory cannot be read right now: the embedder or the vector store is down."""


class MemoryRejected(Exception):
    """This memory can never be stored as given (a client error, not an outage)."""


class OutboxFull(Exception):
    """The outbox cannot take the write: its disk is full or failing."""


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
        *,
        read_your_writes_s: float = READ_YOUR_WRITES_S,
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
        self._read_your_writes_s = read_your_writes_s
        self._dead = 0  # entries set aside (counted from the table at start)
        # Users someone waits for (a recall, an API write): replayed first.
        self._wanted: dict[Scope, int] = {}
        self._progress = asyncio.Condition()

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
        source = unique[0].source if unique else "api"
        if self.available and self._outbox.pending(scope):
            # Older writes of this user wait: they go first (order matters within a user).
            await self.wait_stored(scope, self._read_your_writes_s)
        if self.available and not self._outbox.pending(scope):
            try:
                results = await self.write_now(scope, unique)
            except OUTAGES as exc:
                self._report(exc)
            except EmbedderRejected:
                raise
            except Exception as exc:  # the store cannot take it: a client error
                logger.warning("memory write for %s refused: %r", scope.tenant, exc)
                raise MemoryRejected(f"{type(exc).__name__}: {exc}") from exc
            else:
                for result in results:
                    outcome = "stored" if result.event == ADD else "duplicate"
                    self._metrics.memory_writes.labels(source, outcome).inc()
                return AddOutcome(results, queued=False)
        await self.enqueue(scope, unique)
        results = [WriteResult(memory_id(scope, m.text), m.text, ADD) for m in unique]
        return AddOutcome(results, queued=True)

    async def enqueue(self, scope: Scope, memories: Sequence[NewMemory]) -> None:
        """Put the memories in the durable outbox (committed when this returns)."""
        if not memories:
            return
        try:
            await self._outbox.put(scope, memories)
        except sqlite3.Error as exc:  # SQLITE_FULL, an I/O error, a read-only file
            self._metrics.memory_writes.labels(memories[0].source, "failed").inc(len(memories))
            raise OutboxFull(f"the outbox cannot take the write: {exc}") from exc
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
        await self._progressed()
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
        if self._outbox.pending(scope):
            # The user's last turns may not be stored yet: read them first.
            await self.wait_stored(scope, self._read_your_writes_s)
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
        self._dead = self._outbox.dead_count()
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._metrics.outbox_dead.set(self._dead)
        self._replayer = asyncio.create_task(self._replay_forever(), name="outbox-replay")

    async def stop_replayer(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)

    def wake_replayer(self) -> None:
        self._replay_wake.set()

    async def wait_stored(self, scope: Scope, timeout_s: float) -> bool:
        """Wait until the user's entries queued now are stored (or set aside);
        False if some still wait after ``timeout_s``. The replayer takes this
        user's entries before older ones of other users meanwhile."""
        seqs = self._outbox.pending_seqs(scope)
        if not seqs:
            return True
        self._wanted[scope] = self._wanted.get(scope, 0) + 1
        self._replay_wake.set()

        def stored() -> bool:
            return not any(self._outbox.is_pending(seq) for seq in seqs)

        try:
            async with self._progress:
                await asyncio.wait_for(self._progress.wait_for(stored), timeout_s)
        except TimeoutError:
            self._metrics.read_your_writes_timeouts.inc()
            return False
        finally:
            self._wanted[scope] -= 1
            if self._wanted[scope] <= 0:
                del self._wanted[scope]
        return True

    async def _progressed(self) -> None:
        self._metrics.outbox_depth.set(self._outbox.depth)
        self._metrics.outbox_dead.set(self._dead)
        async with self._progress:
            self._progress.notify_all()

    async def drain(self) -> int:
        """Replay queued entries until empty or blocked; return how many were applied.

        A batch is bounded by its entries' text size (REPLAY_MAX_CHARS), and
        shares one embedder call (split into parts by the client), so a
        backlog drains at the embedder's batch speed. The call goes at
        background priority: queries of chat turns overtake it. Only an
        outage stops the drain; an entry that fails for any other reason is
        set aside (``dead``) with that reason and the rest go on.
        """
        applied = 0
        while self.available:
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
            try:
                batches = [(e.scope, e.memories) for e in entries]
                results = await self.write_batches(batches, priority)
            except OUTAGES as exc:
                self._report(exc)
                await self._outbox.failed(entries[0].seq, str(exc))
                self._metrics.outbox_replays.labels("retry").inc()
                break
            except Exception as exc:  # anything but an outage is about the entries
                if len(entries) > 1:
                    applied += await self._drain_one_by_one(entries)
                    if not self.available:
                        break
                    continue
                await self._set_aside(entries[0], exc)
            else:
                await self._outbox.done([e.seq for e in entries])
                for entry, written in zip(entries, results, strict=True):
                    self._count_replayed(entry.memories, written)
                applied += len(entries)
            finally:
                await self._progressed()
        return applied

    async def _drain_one_by_one(self, entries: Sequence[OutboxEntry]) -> int:
        """A batch failed, not for an outage: find the entries at fault, apply the others."""
        applied = 0
        for entry in entries:
            try:
                written = await self.write_now(entry.scope, entry.memories, BACKGROUND)
            except OUTAGES as exc:
                self._report(exc)
                await self._outbox.failed(entry.seq, str(exc))
                self._metrics.outbox_replays.labels("retry").inc()
                return applied
            except Exception as exc:  # not an outage: this entry is at fault
                await self._set_aside(entry, exc)
                continue
            await self._outbox.done([entry.seq])
            self._count_replayed(entry.memories, written)
            applied += 1
        return applied

    async def _set_aside(self, entry: OutboxEntry, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, EmbedderRejected) else f"{type(exc).__name__}: {exc}"
        logger.error(
            "outbox entry %d (tenant %s) can never be stored, set aside: %s",
            entry.seq, entry.scope.tenant, reason,
        )  # fmt: skip
        await self._outbox.bury(entry.seq, reason[:2000])
        self._dead += 1
        self._metrics.outbox_replays.labels("dead").inc()

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
