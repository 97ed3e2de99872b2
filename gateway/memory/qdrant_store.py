"""The Qdrant server adapter, through ``AsyncQdrantClient``.

``url=":memory:"`` runs qdrant-client's local in-process mode: the tests use
it to hold this adapter to the same contract as the Edge one.

A server that is down when the gateway starts does not stop it: the
collections are opened (created where missing) by the first call that reaches
the server, the store monitor's ping as a rule. Until then every call is
``StoreUnavailable``, so chat goes on without memory and writes wait in the
outbox, as in any later outage. A collection of another size found then is
unavailable too, with the mismatch as its reason; at start it stops the gateway.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from gateway.exceptions import DimensionMismatch, StoreUnavailable
from gateway.memory.records import (
    Condition,
    MemoryRecord,
    Scope,
    forget_id,
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


def _filter(conditions: Sequence[Condition]) -> models.Filter:
    must: list[Any] = []
    for cond in conditions:
        match: Any = (
            models.MatchValue(value=cond.values[0])
            if len(cond.values) == 1
            else models.MatchAny(any=list(cond.values))  # type: ignore[arg-type]
        )
        must.append(models.FieldCondition(key=cond.path, match=match))
    return models.Filter(must=must)


def _sparse(vector: Sparse) -> models.SparseVector:
    return models.SparseVector(indices=vector.indices, values=vector.values)


# The payload indexes the searches' filters use: the tenant's first (Qdrant keeps a
# tenant's points together), the user's, the session window's, and the write time's.
PAYLOAD_INDEXES: tuple[tuple[str, Any], ...] = (
    ("tenant", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
    ("user_id", models.PayloadSchemaType.KEYWORD),
    ("session_key", models.PayloadSchemaType.KEYWORD),
    ("written_at", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER,
                                             lookup=False, range=True)),
)  # fmt: skip


class QdrantServerStore:
    name = "qdrant"
    needs_flush = False  # an upsert answers once the server has it (wait=True)

    def __init__(
        self, url: str, api_key: str | None, collection: str, dimension: int, timeout_s: float = 5.0
    ) -> None:
        self._collection = collection
        # Each user's latest forget, for the other gateways on this server
        # (``note_forget``): a point per user, no vectors.
        self._forgets = f"{collection}_forgets"
        self._dimension = dimension
        self._opened = False
        self._opening = asyncio.Lock()  # one creation of the collections at a time
        if url == ":memory:":
            self._client = AsyncQdrantClient(location=":memory:")
        else:
            self._client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))

    async def _call(self, request: Coroutine[Any, Any, T]) -> T:
        """``request`` on an opened collection: opening it first if need be."""
        if not self._opened:
            try:
                await self._open_late()
            except BaseException:
                request.close()  # never sent: no "was never awaited" warning
                raise
        return await self._request(request)

    async def _request(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (ResponseHandlingException, httpx.TransportError) as exc:
            raise StoreUnavailable(f"qdrant unreachable: {type(exc).__name__}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code >= 500:
                raise StoreUnavailable(f"qdrant answered {exc.status_code}") from exc
            raise

    async def open(self) -> None:
        """Open the collections now, or leave them to the first call once the
        server answers; a collection of another size stops the start."""
        try:
            async with self._opening:
                await self._create_collections()
                self._opened = True
        except StoreUnavailable as exc:
            logger.warning(
                "the Qdrant server cannot be reached (%s): chat goes on without memory "
                "and writes wait in the outbox until it answers",
                exc,
            )

    async def _open_late(self) -> None:
        async with self._opening:
            if self._opened:
                return
            try:
                await self._create_collections()
            except DimensionMismatch as exc:
                raise StoreUnavailable(str(exc)) from exc
            self._opened = True
            logger.info("the Qdrant collection %r is open", self._collection)

    async def _create_collections(self) -> None:
        if not await self._request(self._client.collection_exists(self._forgets)):
            await self._request(self._client.create_collection(self._forgets, vectors_config={}))
        indexed: set[str] = set()
        if await self._request(self._client.collection_exists(self._collection)):
            info = await self._request(self._client.get_collection(self._collection))
            self._check_vectors(info.config.params.vectors)
            # A start cut short after the collection was made (the server went away
            # between it and its indexes) left a collection without them: made now.
            indexed = set(info.payload_schema or {})
        else:
            dense = models.VectorParams(size=self._dimension, distance=models.Distance.COSINE)
            idf = models.SparseVectorParams(modifier=models.Modifier.IDF)
            await self._request(
                self._client.create_collection(
                    self._collection,
                    vectors_config={DENSE_TEXT: dense, DENSE_CONTEXT: dense},
                    sparse_vectors_config={SPARSE_TEXT: idf, SPARSE_CONTEXT: idf},
                )
            )
        for field, schema in PAYLOAD_INDEXES:
            if field not in indexed:
                await self._request(
                    self._client.create_payload_index(self._collection, field, field_schema=schema)
                )

    def _check_vectors(self, vectors: Any) -> None:
        sizes = (
            {name: params.size for name, params in vectors.items()}
            if isinstance(vectors, dict)
            else {}
        )
        wanted = {DENSE_TEXT: self._dimension, DENSE_CONTEXT: self._dimension}
        if sizes != wanted:
            raise DimensionMismatch(
                f"Qdrant collection {self._collection!r} has vectors {sizes or vectors}, "
                f"this gateway needs {wanted} (and sparse {SPARSE_TEXT}, "
                f"{SPARSE_CONTEXT}): use another GATEWAY_QDRANT_COLLECTION or re-embed"
            )

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> None:
        await self._call(self._client.collection_exists(self._collection))

    async def upsert(self, scope: Scope, points: Sequence[StoredPoint]) -> None:
        batch = [
            models.PointStruct(
                id=p.id,
                vector={
                    DENSE_TEXT: list(p.vectors.text),
                    DENSE_CONTEXT: list(p.vectors.context),
                    SPARSE_TEXT: _sparse(p.vectors.sparse_text),
                    SPARSE_CONTEXT: _sparse(p.vectors.sparse_context),
                },
                payload=to_payload(scope, p.memory, p.written_at),
            )
            for p in points
        ]
        await self._call(self._client.upsert(self._collection, batch, wait=True))

    async def flush(self) -> None:
        """Nothing to do: an upsert returns once the server has it (``wait=True``);
        how the server keeps its WAL on disk is the server's configuration."""

    async def existing_ids(self, scope: Scope, ids: Sequence[str]) -> set[str]:
        found = await self._call(self._client.retrieve(self._collection, list(ids)))
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
        prefetch = [
            models.Prefetch(
                query=dense, using=name, limit=PREFETCH_LIMIT, filter=selector,
                score_threshold=min_score,
            )
            for name in (DENSE_TEXT, DENSE_CONTEXT)
        ] + [
            models.Prefetch(query=sparse, using=name, limit=PREFETCH_LIMIT, filter=selector)
            for name in (SPARSE_TEXT, SPARSE_CONTEXT)
        ]  # fmt: skip
        response = await self._call(
            self._client.query_points(
                self._collection,
                prefetch=prefetch,
                query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                query_filter=selector,
                limit=limit,
                with_payload=True,
            )
        )
        return [record_of(hit, hit.score) for hit in response.points]

    async def recent(self, scope: Scope, session_id: str | None, limit: int) -> list[str]:
        points, _ = await self._call(
            self._client.scroll(
                self._collection,
                scroll_filter=_filter(session_conditions(scope, session_id)),
                limit=limit,
                with_payload=["memory"],
                order_by=models.OrderBy(key="written_at", direction=models.Direction.DESC),
            )
        )
        return [str((p.payload or {}).get("memory", "")) for p in reversed(points)]

    async def get(self, tenant: str, memory_id: str) -> MemoryRecord | None:
        found = await self._call(self._client.retrieve(self._collection, [memory_id]))
        for point in found:
            if point.payload and point.payload.get("tenant") == tenant:
                return record_of(point)
        return None

    async def neighbours(self, scope: Scope, memory_id: str, count: int) -> SessionGap | None:
        found = await self._call(self._client.retrieve(self._collection, [memory_id]))
        if not found or not in_scope(found[0].payload, scope):
            return None
        payload = found[0].payload or {}
        selector = _filter(session_conditions(scope, payload.get("session_key") or None))
        written_at = int(payload.get("written_at", 0))

        async def side(direction: models.Direction, start: int) -> list[tuple[str, int]]:
            order = models.OrderBy(key="written_at", direction=direction, start_from=start)
            points, _ = await self._call(
                self._client.scroll(self._collection, scroll_filter=selector, order_by=order,
                                    limit=side_limit(count), with_payload=["written_at"])
            )  # fmt: skip
            return [(str(p.id), int((p.payload or {})["written_at"])) for p in points]

        candidates = await side(models.Direction.DESC, written_at + START_SLACK)
        candidates += await side(models.Direction.ASC, written_at - START_SLACK)
        before, after = split_around(candidates, memory_id, written_at, count)
        stored = await self._call(
            self._client.retrieve(self._collection, [*before, *after], with_payload=["memory"],
                                  with_vectors=[DENSE_TEXT])
        )  # fmt: skip
        points = {str(p.id): session_point(p) for p in stored}
        return SessionGap([points[i] for i in before if i in points],
                          [points[i] for i in after if i in points])  # fmt: skip

    async def update_context(self, scope: Scope, contexts: Sequence[ContextVectors]) -> None:
        points = [
            models.PointVectors(id=c.id, vector={DENSE_CONTEXT: list(c.context),
                                                 SPARSE_CONTEXT: _sparse(c.sparse_context)})
            for c in contexts
        ]  # fmt: skip
        await self._call(
            self._client.update_vectors(self._collection, points, wait=True,
                                        update_filter=_filter(scope_conditions(scope)))
        )  # fmt: skip

    async def list(
        self, scope: Scope, limit: int, cursor: str | None
    ) -> tuple[list[MemoryRecord], str | None]:
        points, next_offset = await self._call(
            self._client.scroll(
                self._collection,
                scroll_filter=_filter(scope_conditions(scope)),
                limit=limit,
                offset=cursor,
                with_payload=True,
            )
        )
        return [record_of(p) for p in points], (str(next_offset) if next_offset else None)

    async def delete(self, scope: Scope, memory_id: str) -> bool:
        if not await self.existing_ids(scope, [memory_id]):
            return False
        await self._call(
            self._client.delete(
                self._collection, models.PointIdsList(points=[memory_id]), wait=True
            )
        )
        return True

    async def users(self, tenant: str, limit: int) -> builtins.list[str]:
        response = await self._call(
            self._client.facet(
                self._collection,
                "user_id",
                facet_filter=_filter([Condition("tenant", (tenant,))]),
                limit=limit,
                exact=True,
            )
        )
        return sorted(str(hit.value) for hit in response.hits)

    async def delete_scope(self, scope: Scope) -> int:
        selector = _filter(scope_conditions(scope))
        counted = await self._call(
            self._client.count(self._collection, count_filter=selector, exact=True)
        )
        await self._call(
            self._client.delete(self._collection, models.FilterSelector(filter=selector), wait=True)
        )
        return counted.count

    async def note_forget(self, scope: Scope, at: float) -> None:
        """Before the user's memories are deleted: a gateway that stores a
        write of theirs reads this after its upsert (gateway.memory.writes), so
        either it sees the forget or the deletion comes after its upsert."""
        payload = {"tenant": scope.tenant, "user_id": scope.user_id, "at": at}
        point = models.PointStruct(id=forget_id(scope), vector={}, payload=payload)
        await self._call(self._client.upsert(self._forgets, [point], wait=True))

    async def forgotten_at(self, scopes: Sequence[Scope]) -> dict[Scope, float]:
        wanted = {forget_id(scope): scope for scope in scopes}
        found = await self._call(self._client.retrieve(self._forgets, list(wanted)))
        out: dict[Scope, float] = {}
        for record in found:
            scope = wanted.get(str(record.id))
            if scope is not None and in_scope(record.payload, scope):
                out[scope] = float((record.payload or {})["at"])
        return out
