"""Qdrant Edge: the real Qdrant engine in-process, one shard under the data dir.

The shard's calls are synchronous; they run on worker threads so the event
loop never waits on disk. One gateway process owns a shard: an exclusive
``flock`` on the directory turns a second process on the same data dir into a
clear start-up error instead of two writers on one shard.

The shard is never ``optimize()``d. Measured at 100k memories
(bench/results/edge_optimize.md): the call holds the GIL for its whole run,
minutes, so the event loop and every request would stop for that long; and
afterwards the per-user filtered search the gateway runs was slower, with
more RSS and disk, not less. The price: the space of deleted
memories is not reclaimed in place. Deployments that delete at scale use a
Qdrant server, which optimizes in its own process.
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import qdrant_edge as qe

from gateway.datadir import DiskSpace
from gateway.exceptions import DataDirProblem, DimensionMismatch, StoreUnavailable
from gateway.memory.records import (
    Condition,
    MemoryRecord,
    Scope,
    in_scope,
    record_of,
    scope_conditions,
    session_conditions,
    to_payload,
)
from gateway.memory.sparse import Sparse
from gateway.memory.store import (
    DENSE_CONTEXT,
    DENSE_TEXT,
    PREFETCH_LIMIT,
    RRF_K,
    SPARSE_CONTEXT,
    SPARSE_TEXT,
    START_SLACK,
    ContextVectors,
    QueryVectors,
    SessionGap,
    StoredPoint,
    session_point,
    side_limit,
    split_around,
)

T = TypeVar("T")

logger = logging.getLogger("gateway.memory")


# Tenant first: Qdrant co-locates a tenant's points when is_tenant is set.
_INDEXES: list[tuple[str, Any]] = [
    ("tenant", qe.KeywordIndexParams(is_tenant=True)),
    ("user_id", qe.PayloadSchemaType.Keyword),
    ("session_key", qe.PayloadSchemaType.Keyword),
    ("written_at", qe.IntegerIndexParams(lookup=False, range=True)),
]


def _sparse(vector: Sparse) -> qe.SparseVector:
    return qe.SparseVector(vector.indices, vector.values)


def _filter(conditions: Sequence[Condition]) -> qe.Filter:
    must: list[Any] = []
    for cond in conditions:
        match: Any = (
            qe.MatchValue(cond.values[0])
            if len(cond.values) == 1
            else qe.MatchAny(list(cond.values))  # type: ignore[arg-type]
        )
        must.append(qe.FieldCondition(cond.path, match=match))
    return qe.Filter(must=must)


class EdgeStore:
    name = "qdrant-edge"
    needs_flush = True  # the shard's WAL is a memory-mapped file: flush() puts writes on disk

    def __init__(self, path: Path, dimension: int, space: DiskSpace | None = None) -> None:
        self._path = path
        self._dimension = dimension
        # Below its reserve, writes are refused (they wait in the outbox) and
        # the probe fails with the reason, rather than the engine filling the
        # disk under its memory-mapped WAL (a SIGBUS: gateway.datadir).
        self._space = space
        self._shard: qe.EdgeShard | None = None
        self._lock_file: IO[str] | None = None

    async def open(self) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._take_lock()
        self._shard = await asyncio.to_thread(self._open_shard)

    def _take_lock(self) -> IO[str]:
        handle = (self._path / ".lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"{self._path} is in use by another gateway process; "
                "give each gateway its own GATEWAY_DATA_DIR or use a Qdrant server"
            ) from None
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _open_shard(self) -> qe.EdgeShard:
        shard_dir = self._path / "shard"
        dense = qe.EdgeVectorParams(size=self._dimension, distance=qe.Distance.Cosine)
        idf = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)
        config = qe.EdgeConfig(
            vectors={DENSE_TEXT: dense, DENSE_CONTEXT: dense},
            sparse_vectors={SPARSE_TEXT: idf, SPARSE_CONTEXT: idf},
        )
        if not shard_dir.exists():
            shard = qe.EdgeShard.create(str(shard_dir), config)
            for field, schema in _INDEXES:
                shard.update(qe.UpdateOperation.create_field_index(field, schema))
            return shard
        try:
            return qe.EdgeShard.load(str(shard_dir), config)
        except Exception as exc:
            if "ncompatible" in str(exc):
                raise DimensionMismatch(
                    f"the memory store at {shard_dir} holds vectors of another size or "
                    f"layout than this gateway's ({self._dimension}-dimensional, named "
                    f"vectors): {exc}. Use a new GATEWAY_DATA_DIR or re-embed the memories."
                ) from exc
            raise DataDirProblem(
                f"the memory store at {shard_dir} cannot be opened ({exc}): restore the "
                "data dir from a backup, or move the shard aside (keep it) to start with "
                "an empty store"
            ) from exc

    async def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None

            def flush_and_close() -> None:
                shard.flush()
                shard.close()

            try:
                await asyncio.to_thread(flush_and_close)
            except Exception as exc:  # the lock is released all the same
                logger.error("qdrant edge failed to close: %s", exc)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def _run(self, fn: Callable[[qe.EdgeShard], T]) -> T:
        shard = self._shard
        if shard is None:
            raise StoreUnavailable("the memory store is closed")
        try:
            return await asyncio.to_thread(fn, shard)
        except Exception as exc:
            # qdrant_edge raises plain Exception for every engine error (I/O, a
            # full disk, a shard it cannot serve). To callers that is the store
            # failing: recalls degrade and writes wait in the outbox, no 500.
            logger.error("qdrant edge failed: %s", exc)
            raise StoreUnavailable(f"the memory store failed: {exc}") from exc

    def _check_space(self, removal: bool = False) -> None:
        problem = self._space.problem(removal) if self._space is not None else None
        if problem is not None:
            raise StoreUnavailable(problem)

    async def ping(self) -> None:
        self._check_space()
        await self._run(lambda shard: shard.info())

    async def upsert(self, scope: Scope, points: Sequence[StoredPoint]) -> None:
        self._check_space()
        batch = [
            qe.Point(
                p.id,
                {
                    DENSE_TEXT: list(p.vectors.text),
                    DENSE_CONTEXT: list(p.vectors.context),
                    SPARSE_TEXT: _sparse(p.vectors.sparse_text),
                    SPARSE_CONTEXT: _sparse(p.vectors.sparse_context),
                },
                to_payload(scope, p.memory, p.written_at),
            )
            for p in points
        ]
        await self._run(lambda shard: shard.update(qe.UpdateOperation.upsert_points(batch)))

    async def flush(self) -> None:
        # ``update`` writes the shard's WAL through a memory-mapped file: a
        # killed process leaves it in the page cache, a power cut does not.
        # ``flush`` writes the WAL and the segments to disk.
        await self._run(lambda shard: shard.flush())

    async def existing_ids(self, scope: Scope, ids: Sequence[str]) -> set[str]:
        found = await self._run(lambda shard: shard.retrieve(list(ids), True, False))
        return {str(r.id) for r in found if in_scope(r.payload, scope)}

    async def search(
        self,
        scope: Scope,
        query: QueryVectors,
        limit: int,
        conditions: Sequence[Condition] = (),
        min_score: float | None = None,
    ) -> list[MemoryRecord]:
        selector = _filter([*scope_conditions(scope), *conditions])
        dense, sparse = list(query.dense), _sparse(query.sparse)
        prefetches = [
            qe.Prefetch(
                limit=PREFETCH_LIMIT,
                query=qe.Query.Nearest(dense, using=name),
                filter=selector,
                score_threshold=min_score,
            )
            for name in (DENSE_TEXT, DENSE_CONTEXT)
        ] + [
            qe.Prefetch(
                limit=PREFETCH_LIMIT, query=qe.Query.Nearest(sparse, using=name), filter=selector
            )
            for name in (SPARSE_TEXT, SPARSE_CONTEXT)
        ]
        request = qe.QueryRequest(
            limit=limit,
            prefetches=prefetches,
            query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # the stub omits it
            filter=selector,
            with_payload=True,
        )
        hits = await self._run(lambda shard: shard.query(request))
        return [record_of(hit, hit.score) for hit in hits]

    async def recent(self, scope: Scope, session_id: str | None, limit: int) -> list[str]:
        request = qe.ScrollRequest(
            limit=limit,
            filter=_filter(session_conditions(scope, session_id)),
            with_payload=["memory"],
            order_by=qe.OrderBy("written_at", direction=qe.Direction.Desc),
        )
        points, _ = await self._run(lambda shard: shard.scroll(request))
        return [str((p.payload or {}).get("memory", "")) for p in reversed(points)]

    async def get(self, tenant: str, memory_id: str) -> MemoryRecord | None:
        found = await self._run(lambda shard: shard.retrieve([memory_id], True, False))
        for point in found:
            if point.payload and point.payload.get("tenant") == tenant:
                return record_of(point)
        return None

    async def neighbours(self, scope: Scope, memory_id: str, count: int) -> SessionGap | None:
        def read(shard: qe.EdgeShard) -> SessionGap | None:
            found = shard.retrieve([memory_id], True, False)
            if not found or not in_scope(found[0].payload, scope):
                return None
            payload = found[0].payload or {}
            selector = _filter(session_conditions(scope, payload.get("session_key") or None))
            written_at = int(payload.get("written_at", 0))

            def side(direction: qe.Direction, start: int) -> list[tuple[str, int]]:
                order = qe.OrderBy("written_at", direction=direction, start_from=start)
                request = qe.ScrollRequest(limit=side_limit(count), filter=selector,
                                           order_by=order, with_payload=["written_at"])  # fmt: skip
                points, _ = shard.scroll(request)
                return [(str(p.id), int((p.payload or {})["written_at"])) for p in points]

            candidates = side(qe.Direction.Desc, written_at + START_SLACK)
            candidates += side(qe.Direction.Asc, written_at - START_SLACK)
            before, after = split_around(candidates, memory_id, written_at, count)
            stored = shard.retrieve([*before, *after], ["memory"], [DENSE_TEXT])
            points = {str(p.id): session_point(p) for p in stored}
            return SessionGap([points[i] for i in before if i in points],
                              [points[i] for i in after if i in points])  # fmt: skip

        return await self._run(read)

    async def update_context(self, scope: Scope, contexts: Sequence[ContextVectors]) -> None:
        self._check_space(removal=True)  # part of a delete
        batch = [
            qe.PointVectors(c.id, {DENSE_CONTEXT: list(c.context),
                                   SPARSE_CONTEXT: _sparse(c.sparse_context)})
            for c in contexts
        ]  # fmt: skip
        operation = qe.UpdateOperation.update_vectors(batch, _filter(scope_conditions(scope)))
        await self._run(lambda shard: shard.update(operation))

    async def list(
        self, scope: Scope, limit: int, cursor: str | None
    ) -> tuple[list[MemoryRecord], str | None]:
        request = qe.ScrollRequest(
            offset=cursor, limit=limit, filter=_filter(scope_conditions(scope)), with_payload=True
        )
        points, next_offset = await self._run(lambda shard: shard.scroll(request))
        return [record_of(p) for p in points], (str(next_offset) if next_offset else None)

    async def delete(self, scope: Scope, memory_id: str) -> bool:
        if not await self.existing_ids(scope, [memory_id]):
            return False
        self._check_space(removal=True)
        await self._run(lambda shard: shard.update(qe.UpdateOperation.delete_points([memory_id])))
        return True

    async def users(self, tenant: str, limit: int) -> builtins.list[str]:
        request = qe.FacetRequest(
            "user_id", limit=limit, exact=True, filter=_filter([Condition("tenant", (tenant,))])
        )
        response = await self._run(lambda shard: shard.facet(request))
        return sorted(str(hit.value) for hit in response.hits)

    async def delete_scope(self, scope: Scope) -> int:
        selector = _filter(scope_conditions(scope))
        self._check_space(removal=True)

        def forget(shard: qe.EdgeShard) -> int:
            count = shard.count(qe.CountRequest(filter=selector))
            shard.update(qe.UpdateOperation.delete_points_by_filter(selector))
            return count

        return await self._run(forget)

    async def note_forget(self, scope: Scope, at: float) -> None:
        """Nothing to tell: only this process can open the shard."""

    async def forgotten_at(self, scopes: Sequence[Scope]) -> dict[Scope, float]:
        return {}
