"""What the memory service answers: a write's results, its state for
``/readyz``, the outbox's report; and how a write's results are shaped."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.enums import MemoryEvent
from gateway.exceptions import OutboxFull, OutboxRefused, OutboxUnavailable
from gateway.memory.embedder_client import BACKGROUND, INTERACTIVE, PART_TEXTS
from gateway.memory.outbox_rows import DeadEntry
from gateway.memory.records import NewMemory
from gateway.memory.writes import WriteResult
from gateway.monitor import Monitor


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


def write_priority(memories: Sequence[NewMemory]) -> int:
    """A bulk write (more texts than one embedder request carries: two per
    memory) goes at background priority, so chat queries overtake it at the
    embedder; an ordinary write goes at a query's."""
    return BACKGROUND if 2 * len(memories) > PART_TEXTS else INTERACTIVE


def per_memory(memories: Sequence[NewMemory], unique: Sequence[WriteResult]) -> list[WriteResult]:
    """One result per memory given, in order (so a client can pair them with its
    messages): a text repeated within the batch is one memory, ``NONE`` after
    its first time."""
    by_text = {result.memory: result for result in unique}
    seen: set[str] = set()
    results = []
    for memory in memories:
        result = by_text[memory.text]
        results.append(
            result
            if memory.text not in seen
            else WriteResult(result.id, result.memory, MemoryEvent.NONE)
        )
        seen.add(memory.text)
    return results


def refusal(exc: sqlite3.Error, action: str = "take the write") -> OutboxRefused:
    """What a client is told when the outbox cannot take a write (or do
    ``action``, a forget's or a delete's removal): only a full disk
    (SQLITE_FULL) is a 507; locked by another process, read-only, failing,
    gone is not a matter of space, and a retry may work (after a restart, for a
    removed file): 503."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return OutboxFull(f"the outbox cannot {action}: {exc}")
    return OutboxUnavailable(f"the outbox cannot {action}: {exc}")
