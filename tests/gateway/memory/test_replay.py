"""The replayer on its own: a real outbox, a write function the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from gateway.exceptions import EmbedderUnavailable, StoreUnavailable
from gateway.memory.embedder_client import BACKGROUND
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.replay import Batch, Claim, Replayer
from gateway.metrics import GatewayMetrics
from tests.gateway.memory.harness import outbox_rows

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


class Flushes:
    """The store's flush: counts, records how many rows were on disk at each,
    fails as told."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.rows_at: list[int] = []
        self.fail = 0  # the next this many flushes fail
        self.flushed = asyncio.Event()

    async def __call__(self) -> None:
        [(rows,)] = self.outbox._execute("SELECT COUNT(*) FROM outbox")
        self.rows_at.append(rows)
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("the memory store failed: I/O error")
        self.flushed.set()


def replayer(
    outbox: Outbox, writes: Writes, flush: Flushes | None = None, **policy: float
) -> tuple[Replayer[int], GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    reported: list[Exception] = []
    counted: list[tuple[Sequence[NewMemory], int]] = []
    r = Replayer(
        outbox, metrics, write=writes, flush=flush or Flushes(outbox), available=lambda: True,
        report=reported.append, count=lambda m, w: counted.append((m, w)), **policy,  # type: ignore[arg-type]
    )  # fmt: skip
    return r, metrics


def deletions(outbox: Outbox) -> asyncio.Event:
    """Set once the outbox has deleted rows (after a flush)."""
    deleted, done = asyncio.Event(), outbox.done

    async def spy(seqs: Sequence[int]) -> None:
        await done(seqs)
        deleted.set()

    outbox.done = spy  # type: ignore[method-assign]
    return deleted


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


async def test_the_stored_entries_of_many_batches_share_one_flush(outbox: Outbox) -> None:
    # A flush costs ~23 ms with the event loop held whatever it writes: chat
    # turns replayed one by one must not pay one each. Their rows stay on disk
    # until the flush; their users' reads need not wait for it.
    writes, flush = Writes(), Flushes(outbox)
    r, _ = replayer(outbox, writes, flush, flush_interval_s=3600)
    r.start()
    for text in ("turn 1", "turn 2", "turn 3"):
        await outbox.put(ALICE, memory(text))
        r.wake()
        assert await r.wait_stored(ALICE, 5)  # stored: not queued any more
    assert writes.stored == ["turn 1", "turn 2", "turn 3"] and outbox.depth == 0
    assert flush.rows_at == [] and outbox_rows(outbox) == 3  # not flushed yet: the rows stay
    await r.stop()  # a clean stop flushes, then deletes
    assert flush.rows_at == [3] and outbox_rows(outbox) == 0


async def test_stored_rows_go_once_the_flush_interval_passes(outbox: Outbox) -> None:
    flush, deleted = Flushes(outbox), deletions(outbox)
    r, _ = replayer(outbox, Writes(), flush, flush_interval_s=0.05)
    r.start()
    await outbox.put(ALICE, memory("turn"))
    r.wake()
    await asyncio.wait_for(deleted.wait(), 5)  # no wake needed: the timer
    await r.stop()
    assert flush.rows_at == [1] and outbox_rows(outbox) == 0


async def test_a_backlog_is_flushed_as_it_drains(outbox: Outbox) -> None:
    # Rows waiting for the flush are bounded while a long backlog drains.
    flush, deleted = Flushes(outbox), deletions(outbox)
    r, _ = replayer(outbox, Writes(), flush, flush_interval_s=3600, flush_max_rows=2)
    for i in range(5):
        await outbox.put(Scope("t", f"user {i}"), memory(f"turn {i}"))
    r.start()
    r.wake()
    await asyncio.wait_for(deleted.wait(), 5)  # well before the hour
    assert flush.rows_at == [5]  # one batch of five, then the flush
    await r.stop()
    assert outbox_rows(outbox) == 0


async def test_a_failed_flush_keeps_the_rows_and_is_tried_again(outbox: Outbox) -> None:
    flush, deleted = Flushes(outbox), deletions(outbox)
    flush.fail = 2
    r, _ = replayer(outbox, Writes(), flush, flush_interval_s=0.01)
    r.start()
    await outbox.put(ALICE, memory("turn"))
    r.wake()
    await asyncio.wait_for(deleted.wait(), 10)  # after two failures and backoffs
    await r.stop()
    assert flush.rows_at == [1, 1, 1] and outbox_rows(outbox) == 0


async def test_a_forget_before_the_flush_leaves_nothing_to_delete(outbox: Outbox) -> None:
    flush = Flushes(outbox)
    r, _ = replayer(outbox, Writes(), flush, flush_interval_s=3600)
    r.start()
    await outbox.put(ALICE, memory("turn"))
    r.wake()
    assert await r.wait_stored(ALICE, 5)
    assert await outbox.purge(ALICE) == {memory_id(ALICE, "turn")}  # the row, stored, goes
    assert outbox.unflushed() == set() and outbox_rows(outbox) == 0
    await r.stop()
    assert flush.rows_at == []  # nothing was left to flush for
