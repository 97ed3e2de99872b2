"""Memory records and the pure rules around them: ids, payloads, filters.

A memory belongs to a *scope*, a tenant and a user within it. Every read and
write of the vector store is filtered by both, so scope is the isolation
boundary. Point ids are derived from scope and text, which makes writes
idempotent: the same text for the same user is one memory, and replaying a
queued write can never duplicate it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Fixed namespace so ids stay stable across processes, versions and replays.
_ID_NAMESPACE = uuid.UUID("6f1d1c3e-4a55-4c61-9f0e-6d656d676174")
_FILTER_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")

FilterValue = str | int | bool


@dataclass(frozen=True)
class Scope:
    tenant: str
    user_id: str


@dataclass(frozen=True)
class NewMemory:
    """A memory to be written: text plus what the client said about it."""

    text: str
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    role: str | None = None
    source: str = "api"


@dataclass(frozen=True)
class MemoryRecord:
    id: str
    text: str
    user_id: str
    created_at: datetime
    metadata: Mapping[str, Any]
    session_id: str | None = None
    role: str | None = None
    score: float | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "memory": self.text,
            "user_id": self.user_id,
            "metadata": dict(self.metadata),
            "created_at": self.created_at.isoformat(),
            "session_id": self.session_id,
            "role": self.role,
        }
        if self.score is not None:
            body["score"] = self.score
        return body


@dataclass(frozen=True)
class Condition:
    """Payload ``path`` must equal one of ``values``."""

    path: str
    values: tuple[FilterValue, ...]


def memory_id(scope: Scope, text: str) -> str:
    # A JSON array is an unambiguous encoding: no choice of tenant, user or text
    # can make two different triples produce the same key.
    key = json.dumps([scope.tenant, scope.user_id, text], ensure_ascii=False)
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def to_payload(scope: Scope, memory: NewMemory, written_at: int = 0) -> dict[str, Any]:
    created = memory.created_at.astimezone(UTC)
    return {
        "written_at": written_at,
        "tenant": scope.tenant,
        "user_id": scope.user_id,
        "memory": memory.text,
        "metadata": dict(memory.metadata),
        "created_at": created.isoformat(),
        "created_ts": created.timestamp(),
        "session_id": memory.session_id,
        "session_key": memory.session_id or "",
        "role": memory.role,
        "source": memory.source,
    }


def from_payload(point_id: str, payload: Mapping[str, Any], score: float | None) -> MemoryRecord:
    return MemoryRecord(
        id=point_id,
        text=str(payload.get("memory", "")),
        user_id=str(payload.get("user_id", "")),
        created_at=datetime.fromisoformat(str(payload["created_at"])),
        metadata=payload.get("metadata") or {},
        session_id=payload.get("session_id"),
        role=payload.get("role"),
        score=score,
    )


def record_of(point: Any, score: float | None = None) -> MemoryRecord:
    """A MemoryRecord from a Qdrant point (Edge or server: both have ``id`` and ``payload``)."""
    return from_payload(str(point.id), point.payload or {}, score)


def in_scope(payload: Mapping[str, Any] | None, scope: Scope) -> bool:
    return (
        payload is not None
        and payload.get("tenant") == scope.tenant
        and payload.get("user_id") == scope.user_id
    )


def scope_conditions(scope: Scope) -> list[Condition]:
    return [Condition("tenant", (scope.tenant,)), Condition("user_id", (scope.user_id,))]


def session_conditions(scope: Scope, session_id: str | None) -> list[Condition]:
    """A session's memories; ``session_id`` None means the user's session-less ones
    (stored with an empty ``session_key``)."""
    return [*scope_conditions(scope), Condition("session_key", (session_id or "",))]


def parse_filters(filters: Mapping[str, Any] | None) -> list[Condition]:
    """Client filters: ``{key: value | [values]}`` on metadata, or ``session_id``/``role``.

    Keys are restricted to simple names and nested under ``metadata.``, so a
    filter can never reach the scope fields (``tenant``, ``user_id``).
    Raises ``ValueError`` with a message fit for the client.
    """
    conditions: list[Condition] = []
    for key, raw in (filters or {}).items():
        if not _FILTER_KEY.match(key):
            raise ValueError(f"filters: key {key!r} must match {_FILTER_KEY.pattern}")
        values = raw if isinstance(raw, list) else [raw]
        if not values or not all(isinstance(v, str | int | bool) for v in values):
            raise ValueError(f"filters.{key}: expected a string, integer, boolean or a list")
        path = key if key in ("session_id", "role") else f"metadata.{key}"
        conditions.append(Condition(path, tuple(values)))
    return conditions


MAX_METADATA_DEPTH = 5


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_metadata(metadata: Mapping[str, Any], max_bytes: int) -> str | None:
    """Why ``metadata`` is refused, or None. It comes back verbatim on every search,
    so its size and nesting are bounded."""
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > max_bytes:
        return f"metadata is {size} bytes as JSON; at most {max_bytes} are allowed"
    if _depth(metadata) > MAX_METADATA_DEPTH:
        return f"metadata nests deeper than {MAX_METADATA_DEPTH} levels"
    return None


def parse_timestamp(value: str | datetime | None, now: datetime) -> datetime:
    """ISO 8601; a time without a zone is taken as UTC."""
    if value is None:
        return now
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def dedupe_texts(memories: Sequence[NewMemory]) -> list[NewMemory]:
    """Drop repeats within one batch, keeping the first of each text."""
    seen: set[str] = set()
    unique = []
    for memory in memories:
        if memory.text not in seen:
            seen.add(memory.text)
            unique.append(memory)
    return unique
