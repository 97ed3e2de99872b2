"""Memory records and the pure rules around them: ids, payloads, filters.

A memory belongs to a *scope*, a tenant and a user within it. Every read and
write of the vector store is filtered by both, so scope is the isolation
boundary. Point ids are derived from scope and text, which makes writes
idempotent: the same text for the same user is one memory, and replaying a
queued write can never duplicate it.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.enums import WriteSource

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
    source: WriteSource = WriteSource.API


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


def forget_id(scope: Scope) -> str:
    """The id of the record of a user's forget (one per user, the latest wins)."""
    return memory_id(scope, "\x00forgotten")  # a memory's text is never empty


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


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # Qdrant stores integers as 64-bit
MAX_FILTER_VALUES = 100


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (JSON's ``"\\ud800"`` decodes to one),
    or None. Such a string is not Unicode text: it cannot be encoded as UTF-8, so
    the embedder, the store and the outbox would all fail on it later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


# Unicode's format and control characters: zero-width spaces and joiners,
# direction marks and overrides, the BOM, NUL. None shows, and str.strip keeps them.
_INVISIBLE = frozenset({"Cf", "Cc"})


def is_blank(text: str) -> bool:
    """Whether ``text`` has nothing to read: only whitespace and invisible
    characters. Stored, such a memory would be recalled as an empty quote;
    embedded as a query, it would rank memories at random."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def check_text(text: str, where: str) -> str | None:
    """Why ``text`` is refused, or None."""
    at = lone_surrogate(text)
    if at is None:
        return None
    return f"{where} holds a lone surrogate at index {at} (not valid Unicode)"


def _check_scalar(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        return check_text(value, where)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            return f"{where}: integers must fit in 64 bits"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: NaN and Infinity are not allowed"
    return f"{where}: unsupported value of type {type(value).__name__}"


def _filter_values(key: str, raw: Any) -> tuple[FilterValue, ...]:
    where = f"filters.{key}"
    if not isinstance(raw, list):
        if not isinstance(raw, str | int | bool):
            raise ValueError(f"{where}: expected a string, integer, boolean or a list")
        values: list[Any] = [raw]
    else:
        values = raw
        if not 1 <= len(values) <= MAX_FILTER_VALUES:
            raise ValueError(f"{where}: a list needs 1 to {MAX_FILTER_VALUES} values")
        # Qdrant matches a list of keywords or a list of integers, never a mix.
        if not (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise ValueError(f"{where}: a list must be all strings or all integers")
    for value in values:
        if problem := _check_scalar(value, where):
            raise ValueError(problem)
    return tuple(values)


def parse_filters(filters: Mapping[str, Any] | None) -> list[Condition]:
    """Client filters: ``{key: value | [values]}`` on metadata, or ``session_id``/``role``.

    Keys are restricted to simple names and nested under ``metadata.``, so a
    filter can never reach the scope fields (``tenant``, ``user_id``). A value
    is a string, a 64-bit integer or a boolean; a list is all strings or all
    integers (what Qdrant can match). Raises ``ValueError`` with a message fit
    for the client.
    """
    conditions: list[Condition] = []
    for key, raw in (filters or {}).items():
        if not _FILTER_KEY.match(key):
            raise ValueError(f"filters: key {key!r} must match {_FILTER_KEY.pattern}")
        path = key if key in ("session_id", "role") else f"metadata.{key}"
        conditions.append(Condition(path, _filter_values(key, raw)))
    return conditions


MAX_METADATA_DEPTH = 5


def _check_tree(metadata: Mapping[str, Any]) -> str | None:
    """Depth, and every key and value, without recursion: a client can nest a
    thousand levels, which a recursive walk (or json.dumps) dies on."""
    pending: list[tuple[Any, int, str]] = [(metadata, 1, "metadata")]
    while pending:
        value, depth, where = pending.pop()
        if isinstance(value, dict | list):
            if depth > MAX_METADATA_DEPTH:
                return f"metadata nests deeper than {MAX_METADATA_DEPTH} levels"
            if isinstance(value, dict):
                for key, item in value.items():
                    if problem := _check_scalar(key, f"{where} key"):
                        return problem
                    pending.append((item, depth + 1, f"{where}.{key}"))
            else:
                pending.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))
        elif problem := _check_scalar(value, where):
            return problem
    return None


def check_metadata(metadata: Mapping[str, Any], max_bytes: int) -> str | None:
    """Why ``metadata`` is refused, or None. It comes back verbatim on every search,
    so its size and nesting are bounded; and it must be storable as it is: no
    NaN or Infinity, integers of 64 bits, valid Unicode."""
    if problem := _check_tree(metadata):
        return problem
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > max_bytes:
        return f"metadata is {size} bytes as JSON; at most {max_bytes} are allowed"
    return None


def parse_timestamp(value: str | datetime | None, now: datetime) -> datetime:
    """ISO 8601; a time without a zone is taken as UTC. Raises ValueError for a
    time that has no UTC equivalent (``0001-01-01T00:00:00+14:00`` is before year 1)."""
    if value is None:
        return now
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    try:
        parsed.astimezone(UTC).timestamp()  # what the store keeps: must exist
    except (OverflowError, ValueError, OSError):
        raise ValueError("timestamp is out of range") from None
    return parsed


def dedupe_texts(memories: Sequence[NewMemory]) -> list[NewMemory]:
    """Drop repeats within one batch, keeping the first of each text."""
    seen: set[str] = set()
    unique = []
    for memory in memories:
        if memory.text not in seen:
            seen.add(memory.text)
            unique.append(memory)
    return unique
