"""The vector store interface, implemented for Qdrant Edge and the Qdrant server."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.memory.records import Condition, MemoryRecord, NewMemory, Scope
from gateway.memory.sparse import Sparse

# Named vectors of every point (see gateway.memory.indexing).
DENSE_TEXT, DENSE_CONTEXT, SPARSE_TEXT, SPARSE_CONTEXT = "text", "ctx", "bm25", "bm25_ctx"
PREFETCH_LIMIT = 30  # candidates each of the four lists brings to the fusion
RRF_K = 2


@dataclass(frozen=True)
class PointVectors:
    text: Sequence[float]
    context: Sequence[float]
    sparse_text: Sparse
    sparse_context: Sparse


@dataclass(frozen=True)
class StoredPoint:
    id: str
    vectors: PointVectors
    memory: NewMemory
    written_at: int  # nanoseconds: the order of writes, for session windows


@dataclass(frozen=True)
class SessionPoint:
    """A memory of a session, with its ``text`` vector (as stored: unit length)."""

    id: str
    text: str
    vector: Sequence[float]


@dataclass(frozen=True)
class SessionGap:
    """The memories either side of one in its session, each side oldest first."""

    before: list[SessionPoint]
    after: list[SessionPoint]


def session_point(point: Any) -> SessionPoint:
    """A SessionPoint of a Qdrant point (Edge or server) read with its ``memory``
    and its ``text`` vector."""
    vectors = point.vector if isinstance(point.vector, dict) else {}
    text = str((point.payload or {}).get("memory", ""))
    return SessionPoint(str(point.id), text, list(vectors.get(DENSE_TEXT, ())))


# Qdrant compares an order_by's ``start_from`` as a float, and nanosecond
# ``written_at`` values (about 1.8e18) are 256 apart as floats. A session's
# memories either side of one are read from ``START_SLACK`` beyond it, enough to
# cover the rounding, and ordered by their exact integers (``split_around``).
START_SLACK = 256


def side_limit(count: int) -> int:
    """How many points a side's read needs to hold ``count`` past the memory:
    besides it, those whose ``written_at`` lies within the slack and rounding."""
    return count + 1 + START_SLACK + 128


def split_around(
    candidates: Iterable[tuple[str, int]], memory_id: str, written_at: int, count: int
) -> tuple[list[str], list[str]]:
    """The ids of the ``count`` memories written just before and just after
    ``written_at`` among ``candidates`` (id, written_at), each side oldest first."""
    seen = {id_: at for id_, at in candidates if id_ != memory_id}
    ordered = sorted(seen.items(), key=lambda item: item[1])
    before = [id_ for id_, at in ordered if at < written_at][-count:] if count else []
    after = [id_ for id_, at in ordered if at > written_at][:count]
    return before, after


@dataclass(frozen=True)
class ContextVectors:
    """A point's session-window vectors (``ctx``, ``bm25_ctx``), written anew."""

    id: str
    context: Sequence[float]
    sparse_context: Sparse


@dataclass(frozen=True)
class QueryVectors:
    dense: Sequence[float]
    sparse: Sparse


class VectorStore(Protocol):
    """Every method filters by ``scope``: nothing crosses tenants or users."""

    name: str
    # Writes are on disk only after ``flush``: the memory API journals its direct
    # writes in the outbox until then (gateway.memory.service).
    needs_flush: bool

    async def open(self) -> None:
        """Create or load the collection; raise DimensionMismatch on a size conflict."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot serve."""

    async def upsert(self, scope: Scope, points: Sequence[StoredPoint]) -> None: ...

    async def flush(self) -> None:
        """Make every write so far durable: a power cut after this keeps them.
        The replayer calls it before it deletes the outbox rows it stored, and
        forget and delete before they answer."""

    async def existing_ids(self, scope: Scope, ids: Sequence[str]) -> set[str]: ...

    async def search(
        self,
        scope: Scope,
        query: QueryVectors,
        limit: int,
        conditions: Sequence[Condition] = (),
        min_score: float | None = None,
    ) -> list[MemoryRecord]:
        """The four lists fused by RRF; ``min_score`` bounds the dense lists' cosine."""

    async def recent(self, scope: Scope, session_id: str | None, limit: int) -> list[str]:
        """The texts of the session's last ``limit`` memories, oldest first."""

    async def get(self, tenant: str, memory_id: str) -> MemoryRecord | None:
        """A memory by id, only when it belongs to ``tenant``."""

    async def neighbours(self, scope: Scope, memory_id: str, count: int) -> SessionGap | None:
        """The ``count`` memories written before ``memory_id`` in its session and
        the ``count`` after it; None when the memory is not in ``scope``."""

    async def update_context(self, scope: Scope, contexts: Sequence[ContextVectors]) -> None:
        """Replace the session-window vectors of points of ``scope``, nothing else."""

    async def list(
        self, scope: Scope, limit: int, cursor: str | None
    ) -> tuple[list[MemoryRecord], str | None]: ...

    async def delete(self, scope: Scope, memory_id: str) -> bool:
        """Delete one memory of this scope; False when it is not in the scope."""

    async def users(self, tenant: str, limit: int) -> builtins.list[str]:
        """The user ids of a tenant that have memories (admin)."""

    async def delete_scope(self, scope: Scope) -> int:
        """Forget a user: delete all their memories, return how many there were."""

    async def note_forget(self, scope: Scope, at: float) -> None:
        """Record, for every gateway sharing this store, that the user was
        forgotten at ``at`` (Unix time). A store one process owns (Edge) has
        nobody to tell and records nothing."""

    async def forgotten_at(self, scopes: Sequence[Scope]) -> dict[Scope, float]:
        """The latest recorded forget of each of ``scopes`` that has one."""
