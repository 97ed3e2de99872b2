"""The replayer on its own: a real outbox, a write function the test controls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.exceptions import EmbedderUnavailable
from gateway.memory.embedder_client import BACKGROUND
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope
from gateway.memory.replay import Batch, Claim, Replayer
from gateway.metrics import GatewayMetrics

WHEN = datetime(2024, 1, 1, tzinfo=UTC)
ALICE, BOB = Scope("t", "alice"), Scope("t", "bob")


class Writes:
    """Stores texts in a list; fails as told."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.down = False
        self.poison = "poison"
        self.calls: list[tuple[int, list[str]]] = []

    async def __call__(self, batch: Batch, priority: int, claim: Claim) -> list[int]:
        texts = [m.text for _, memories in batch for m in memories]
        self.calls.append((priority, texts))
        if self.down:
            raise EmbedderUnavailable("embedder unreachable")
        if any(self.poison in t for t in texts):
            raise TypeError("failed to convert NaN into payload number type")
        self.stored += texts
        return [len(memories) for _, memories in batch]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    yield box
    box.close()


def replayer(outbox: Outbox, writes: Writes) -> tuple[Replayer[int], GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    reported: list[Exception] = []
    counted: list[tuple[Sequence[NewMemory], int]] = []
    r = Replayer(
        outbox, metrics, write=writes, available=lambda: True,
        report=reported.append, count=lambda m, w: counted.append((m, w)),
    )  # fmt: skip
    return r, metrics


def memory(text: str) -> list[NewMemory]:
    return [NewMemory(text, WHEN)]


async def test_an_outage_stops_the_drain_and_keeps_everything(outbox: Outbox) -> None:
    writes = Writes()
    r, metrics = replayer(outbox, writes)
    await outbox.put(ALICE, memory("a"))
    writes.down = True
    assert await r.drain() == 0
    [entry] = await outbox.head()
    assert entry.attempts == 1 and outbox.dead_count() == 0
    assert metrics.outbox_replays.labels("retry")._value.get() == 1
    writes.down = False
    assert await r.drain() == 1 and writes.stored == ["a"]


async def test_a_bad_entry_in_a_batch_is_set_aside_and_the_rest_applied(outbox: Outbox) -> None:
    writes = Writes()
    r, metrics = replayer(outbox, writes)
    for text in ("a", "poison", "b"):
        await outbox.put(ALICE, memory(text))
    assert await r.drain() == 2
    assert writes.stored == ["a", "b"] and outbox.depth == 0
    [dead] = outbox.dead_entries()
    assert dead.error.startswith("TypeError: failed to convert NaN")
    assert metrics.outbox_dead._value.get() == 1
    assert [p for p, _ in writes.calls] == [BACKGROUND] * 4  # batch, then one by one


async def test_waiting_for_a_user_gives_up_after_the_timeout(outbox: Outbox) -> None:
    writes = Writes()
    writes.down = True
    r, metrics = replayer(outbox, writes)
    await outbox.put(BOB, memory("queued"))
    assert await r.wait_stored(ALICE, 0.01)  # nothing of Alice's waits
    assert not await r.wait_stored(BOB, 0.05)  # nobody replays meanwhile
    assert metrics.read_your_writes_timeouts._value.get() == 1
