"""Storing memories: index texts, one embedder call, one upsert per user.

``Writer`` is the write path the memory service and the outbox's replayer
share. A write of several batches (one per user) reads what the store has
(existing ids, each session's last memories), embeds every new text once,
and stores each batch's points, in that order. Each memory is indexed with
its session's previous memories (gateway.memory.indexing); writes to one
session are expected in order, as the outbox replays them.

Removals vs. writes: ``forget`` and ``delete`` (MemoryService) remove under
``lock``, and a write stores under it, after its embedder call, which is
made without it. The replayer's ``Claim`` says which of its outbox rows are
still queued as they were read, and settles the stored ones (their rows go
once the store has flushed them: ``flush``); a direct write whose user lost memories
meanwhile (``removed``) starts over, since its windows and duplicate checks
may hold the removed texts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.enums import MemoryEvent
from gateway.memory.embedder_client import INTERACTIVE, EmbedderClient
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
    window_text,
)
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.replay import Claim
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.store import (
    ContextVectors,
    PointVectors,
    SessionGap,
    StoredPoint,
    VectorStore,
)

logger = logging.getLogger("gateway.memory")

ADD, NONE = MemoryEvent.ADD, MemoryEvent.NONE
Batches = Sequence[tuple[Scope, Sequence[NewMemory]]]
_Fresh = tuple[str, NewMemory, IndexTexts, list[Recent]]  # a new point, before its vectors


@dataclass(frozen=True)
class WriteResult:
    id: str
    memory: str
    event: MemoryEvent  # ADD: new; NONE: this text was already stored for the user


class _Watch:
    """A direct write in flight: the users who lost memories since it began."""

    def __init__(self) -> None:
        self.removed: set[Scope] = set()


@dataclass(frozen=True)
class _Plan:
    """A prepared write (``Writer._prepare``): per batch its new points' ids,
    memories, index texts and windows; the windows to cache; the vectors."""

    plans: list[tuple[Scope, list[_Fresh]]]
    windows: dict[SessionKey, list[Recent]]
    vectors: dict[str, list[float]]
    results: list[list[WriteResult]]


class Writer:
    def __init__(
        self,
        store: VectorStore,
        embedder: EmbedderClient,
        recent: RecentTexts,
        vector_cache: VectorCache,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._recent = recent
        self._vector_cache = vector_cache
        self._sparse = Bm25Encoder()
        self.lock = asyncio.Lock()  # held to store, and to remove (module docstring)
        self._watches: set[_Watch] = set()  # direct writes in flight

    async def flush(self) -> None:
        """The store's writes so far to disk (under ``lock``: no write meanwhile)."""
        async with self.lock:
            await self._store.flush()

    def removed(self, scope: Scope) -> None:
        """The user lost memories (under ``lock``): direct writes in flight start over."""
        for watch in self._watches:
            watch.removed.add(scope)

    async def close_gap(self, scope: Scope, gap: SessionGap) -> None:
        """Index the memories after a deleted one again, their session windows
        made of the memories before them now (under ``lock``, after the delete).

        Their ``ctx`` and ``bm25_ctx`` held the deleted text: left as they
        were, its words would still find them, a trace of what the user had
        deleted. The texts' own vectors are read from the store, so this needs
        no embedder: a delete works while it is down."""
        chain = [*gap.before, *gap.after]
        contexts = []
        for i in range(len(gap.before), len(chain)):
            previous, own = chain[max(0, i - WINDOW) : i], chain[i]
            parts = [(p.text, p.vector) for p in (*previous, own)]
            sparse = self._sparse.document(window_text([p.text for p in previous], own.text))
            contexts.append(ContextVectors(own.id, compose(parts), sparse))
        if contexts:
            await self._store.update_context(scope, contexts)

    async def write(
        self,
        batches: Batches,
        priority: int = INTERACTIVE,
        claim: Claim | None = None,
        on_stored: Callable[[], None] | None = None,
    ) -> list[list[WriteResult]]:
        """Several writes (of one or more users) with one embedder call for all.

        The replayer passes the ``claim`` of its outbox rows: a batch whose row
        was purged or rewritten while this waited on the embedder is not stored
        now. A direct write (no claim) whose user lost memories meanwhile
        starts over; its ``on_stored`` runs under the lock once it is stored
        (its outbox row then waits for the flush, and a forget after it
        removes the row with the points).
        """
        while True:
            watch = _Watch()
            self._watches.add(watch)
            try:
                plan = await self._prepare(batches, priority)
                async with self.lock:
                    if claim is not None:
                        keep = claim.still_queued()
                    elif watch.removed & {scope for scope, _ in batches}:
                        continue  # as a write after the removal
                    else:
                        keep = [True] * len(batches)
                    await self._store_prepared(plan, keep)
                    if on_stored is not None:
                        on_stored()
                    if claim is not None:
                        # Before the entries count as stored: if this fails, they
                        # are replayed again, and checked again.
                        await self._undo_forgotten(plan, keep, claim.began_at)
                        claim.stored()
                    return plan.results
            finally:
                self._watches.discard(watch)

    async def _prepare(self, batches: Batches, priority: int) -> _Plan:
        """What to store: the points' texts and windows, their vectors (the
        embedder call), and the results."""
        windows: dict[SessionKey, list[Recent]] = {}
        plans: list[tuple[Scope, list[_Fresh]]] = []
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
        """Store the batches of ``plan`` that ``keep`` says (under ``lock``)."""
        vectors, windows = plan.vectors, plan.windows
        skipped = {scope for (scope, _), k in zip(plan.plans, keep, strict=True) if not k}
        written_at = time.time_ns()
        for (scope, fresh), k in zip(plan.plans, keep, strict=True):
            if not k or not fresh:
                continue
            # Off the event loop: a bulk write's 256 long memories take hundreds of
            # ms of window vectors and BM25, which held every other request.
            points = await asyncio.to_thread(self._points, fresh, vectors, written_at)
            written_at += len(points)
            await self._store.upsert(scope, points)
        for key, recent in windows.items():
            if Scope(key[0], key[1]) in skipped:
                continue  # a skipped (forgotten, rewritten) user's texts stay out of the cache
            self._recent.put(key, [(t, v if v is not None else vectors[t]) for t, v in recent])

    def _points(
        self, fresh: Sequence[_Fresh], vectors: dict[str, list[float]], written_at: int
    ) -> list[StoredPoint]:
        """The points of one user's new memories: their four vectors each."""
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
        return points

    async def _undo_forgotten(
        self, plan: _Plan, keep: Sequence[bool], began_at: Sequence[float]
    ) -> None:
        """Delete again what was just stored of a user forgotten on another
        gateway after the request behind it began (under ``lock``).

        Gateways that share a Qdrant server each have their own outbox, so a
        forget on one cannot purge another's queue or refuse its turns in
        flight. The forget records itself in the store before it deletes
        (``VectorStore.note_forget``); read here after the upsert, it is
        either seen, and the points go again, or it was recorded after the
        upsert, and its deletion removed them. Either way nothing stays.
        """
        stored = [(scope, fresh, began)
                  for (scope, fresh), k, began in zip(plan.plans, keep, began_at, strict=True)
                  if k and fresh]  # fmt: skip
        if not stored:
            return
        forgotten = await self._store.forgotten_at(list({scope for scope, _, _ in stored}))
        for scope, fresh, began in stored:
            at = forgotten.get(scope)
            if at is None or began > at:
                continue
            for point_id, *_ in fresh:
                await self._store.delete(scope, point_id)
            self._recent.forget(scope.tenant, scope.user_id)
            logger.info(
                "%d memories of tenant %s not kept: their user was forgotten on another "
                "gateway after the request began", len(fresh), scope.tenant,
            )  # fmt: skip

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
