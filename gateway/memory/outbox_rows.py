"""The outbox's rows as the rest of the gateway sees them: a queued entry,
a set-aside (dead) one, and the JSON its memories are stored as."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.memory.records import NewMemory, Scope


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    scope: Scope
    memories: list[NewMemory]
    attempts: int
    # Unix time the request behind it began (a chat turn's start; an API
    # write's queueing): a forget after it, on any gateway, covers it. No
    # default: a made-up time would put an entry before (or after) a forget.
    began_at: float
    revision: int = 0  # bumped in memory whenever the row is rewritten (``drop``)

    @property
    def chars(self) -> int:
        return sum(len(m.text) for m in self.memories)


@dataclass(frozen=True)
class DeadEntry:
    seq: int
    scope: Scope
    memories: int
    enqueued_at: float
    failed_at: float
    error: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "tenant": self.scope.tenant,
            "user_id": self.scope.user_id,
            "memories": self.memories,
            "enqueued_at": self.enqueued_at,
            "failed_at": self.failed_at,
            "error": self.error,
        }


def encode_memories(memories: Sequence[NewMemory]) -> str:
    return json.dumps(
        [
            {
                "text": m.text,
                "created_at": m.created_at.isoformat(),
                "metadata": dict(m.metadata),
                "session_id": m.session_id,
                "role": m.role,
                "source": m.source,
            }
            for m in memories
        ]
    )


def decode_memories(raw: str) -> list[NewMemory]:
    items: list[dict[str, Any]] = json.loads(raw)
    return [
        NewMemory(
            text=item["text"],
            created_at=datetime.fromisoformat(item["created_at"]),
            metadata=item.get("metadata") or {},
            session_id=item.get("session_id"),
            role=item.get("role"),
            source=item.get("source", "api"),
        )
        for item in items
    ]
