"""The write path (gateway.memory.writes): each text embedded once, writes
that race a forget or a delete, and replayed rows deleted only once the
store has flushed them (with tests.gateway.memory.harness)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.exceptions import StoreUnavailable
from gateway.memory import writes
from gateway.memory.indexing import compose, session_key
from gateway.memory.outbox import Outbox
from gateway.memory.qdrant_store import QdrantServerStore
from gateway.memory.records import NewMemory, Scope
from gateway.memory.service import MemoryService
from gateway.memory.store import StoredPoint
from tests.gateway.memory.harness import (
    ALICE,
    DIM,
    WHEN,
    Harness,
    memories,
    opened_harness,
    outbox_rows,
)


async def test_a_bulk_writes_points_are_built_off_the_event_loop(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Window vectors and BM25 for a bulk write of 256 memories of ~4,000
    # characters took 330-430 ms on the event loop (the fake embedder answering at
    # once), and every request and probe waited; during a replay of such entries
    # /livez took up to 4.5 s. Here each point takes 20 ms to build.
    def slow_compose(parts: Sequence[tuple[str, Sequence[float]]]) -> list[float]:
        time.sleep(0.02)
        return compose(parts)

    monkeypatch.setattr(writes, "compose", slow_compose)
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before)

    ticking = asyncio.create_task(ticker())
    outcome = await h.service.add(ALICE, memories(*(f"fact {i}" for i in range(20))))
    ticking.cancel()
    assert not outcome.queued and len(await h.texts()) == 20
    print("LAGS", sorted(lags)[-3:], len(lags))
    assert max(lags) < 0.2, f"the event loop was held {max(lags):.2f} s"


async def test_each_text_is_embedded_once_and_windows_need_no_encoder_pass(h: Harness) -> None:
    # A chat turn: the query is embedded for recall, then the user's message
    # and the reply are stored. The message's vector is the query's, and the
    # session windows are composed from the memories' own vectors.
    turn = [
        NewMemory("did you go to the group?", WHEN, session_id="s"),
        NewMemory("yes, last week!", WHEN, session_id="s"),
    ]
    await h.service.search(ALICE, "did you go to the group?", 5)
    await h.service.add(ALICE, turn)
    assert h.embedder.inputs == ["did you go to the group?", "yes, last week!"]
    await h.service.add(ALICE, [NewMemory("how was it?", WHEN, session_id="s")])
    assert h.embedder.inputs[2:] == ["how was it?"]


async def test_after_a_restart_the_window_texts_from_the_store_are_embedded_once(
    h: Harness,
) -> None:
    await h.service.add(ALICE, [NewMemory(t, WHEN, session_id="s") for t in ("one", "two")])
    fresh = MemoryService(h.store, h.client, h.outbox, h.metrics,
                          h.embedder_monitor, h.store_monitor)  # fmt: skip
    h.embedder.inputs.clear()
    await fresh.add(ALICE, [NewMemory("three", WHEN, session_id="s")])
    assert sorted(h.embedder.inputs) == ["one", "three", "two"]
    h.embedder.inputs.clear()
    await fresh.add(ALICE, [NewMemory("four", WHEN, session_id="s")])
    assert h.embedder.inputs == ["four"]


async def test_forget_while_the_replayer_waits_on_the_embedder_stores_nothing(
    h: Harness,
) -> None:
    # A chat turn's memories are queued; the replayer has read them and waits
    # on the embedder when the user is forgotten: they must not be stored
    # once the embedder answers.
    h.embedder.up = False
    await h.service.add(ALICE, memories("turn question"))
    await h.service.add(ALICE, memories("turn answer"))
    assert h.outbox.depth == 2
    h.embedder.up = True
    h.embedder_monitor.report_success()
    h.embedder.hold = asyncio.Event()
    drain = asyncio.create_task(h.service.drain())
    await h.embedder.held.wait()  # the batch is read, its embedder call waits
    assert await h.service.forget(ALICE) == 2
    h.embedder.hold.set()
    applied = await drain
    assert await h.texts() == [] and h.outbox.depth == 0
    assert applied == 0  # both entries were forgotten, none counts as replayed
    assert await h.service.drain() == 0 and await h.texts() == []


async def test_a_memory_deleted_while_the_replayer_embeds_it_is_not_stored(h: Harness) -> None:
    h.embedder.up = False
    outcome = await h.service.add(ALICE, memories("keep", "delete me"))
    await h.service.add(ALICE, memories("only me"))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    h.embedder.hold = asyncio.Event()
    drain = asyncio.create_task(h.service.drain())
    await h.embedder.held.wait()  # both entries are read, their embedder call waits
    assert await h.service.delete("t", outcome.results[1].id)
    only = await h.outbox.find("t", outcome.results[0].id)
    assert only is not None
    h.embedder.hold.set()
    await drain
    # The rewritten entry, and the user's later one with it, are stored in a
    # later round, as they are now: nothing of the deleted text is indexed.
    assert await h.texts() == ["keep", "only me"] and h.outbox.depth == 0
    assert not any("delete me" in text for _, texts in h.embedder.seen[1:] for text in texts)
    window = h.service._recent.get(session_key(ALICE, None)) or []
    assert [text for text, _ in window] == ["keep", "only me"]


async def test_a_direct_write_forgotten_meanwhile_keeps_nothing_of_the_forgotten(
    h: Harness,
) -> None:
    # An API write waits on the embedder when its user is forgotten: it is
    # stored as a write after the forget, with none of the forgotten memories
    # in its session window (neither in its point nor in the window cache).
    await h.service.add(ALICE, [NewMemory("forgotten", WHEN, session_id="s")])
    h.embedder.hold = asyncio.Event()
    write = asyncio.create_task(h.service.add(ALICE, [NewMemory("later", WHEN, session_id="s")]))
    await h.embedder.held.wait()
    assert await h.service.forget(ALICE) == 1
    h.embedder.hold.set()
    outcome = await write
    assert not outcome.queued and [r.event for r in outcome.results] == ["ADD"]
    assert await h.texts() == ["later"]
    window = h.service._recent.get(session_key(ALICE, "s"))
    assert window is not None and [text for text, _ in window] == ["later"]


async def test_a_direct_write_whose_neighbour_is_deleted_meanwhile_is_indexed_without_it(
    h: Harness,
) -> None:
    # The write read its session window ("kept", "deleted") before the delete:
    # it starts over, so the deleted text is in neither its point nor the cache.
    added = await h.service.add(
        ALICE, [NewMemory(t, WHEN, session_id="s") for t in ("kept", "deleted")]
    )
    calls = len(h.embedder.seen)
    h.embedder.hold = asyncio.Event()
    write = asyncio.create_task(h.service.add(ALICE, [NewMemory("later", WHEN, session_id="s")]))
    await h.embedder.held.wait()
    assert await h.service.delete("t", added.results[1].id)
    h.embedder.hold.set()
    await write
    assert await h.texts() == ["kept", "later"]
    window = h.service._recent.get(session_key(ALICE, "s"))
    assert window is not None and [text for text, _ in window] == ["kept", "later"]
    [_, (_, again)] = h.embedder.seen[calls:]  # the write started over once
    assert "later" in again and not any("deleted" in text for text in again)


@pytest.mark.parametrize("adapter", ["edge", "server"])
async def test_a_deleted_memory_leaves_no_trace_in_the_windows_after_it(
    adapter: str, tmp_path: Path
) -> None:
    # The two memories after a deleted one were indexed with it in their
    # session windows (ctx, bm25_ctx): its words would still find them. After
    # the delete they rank for its words as they do for a user who never had
    # it, and the delete needs no embedder (their vectors come from the store).
    session = ["we met at the cafe", "my locker code is zanzibar 4471", "it was raining",
               "we talked for hours", "then we went home"]  # fmt: skip
    bob = Scope("t", "bob")
    store = QdrantServerStore(":memory:", None, "memories", DIM) if adapter == "server" else None
    async with opened_harness(tmp_path, store) as h:
        added = await h.service.add(ALICE, [NewMemory(t, WHEN, session_id="s") for t in session])
        await h.service.add(
            bob, [NewMemory(t, WHEN, session_id="s") for t in session if "zanzibar" not in t]
        )
        h.embedder.up = False
        assert await h.service.delete("t", added.results[1].id)
        h.embedder.up = True

        async def ranked(scope: Scope) -> list[tuple[float, str]]:
            hits = await h.service.search(scope, "zanzibar 4471", 10)
            return sorted((round(hit.score or 0.0, 6), hit.text) for hit in hits)

        assert await ranked(ALICE) == await ranked(bob)


async def test_the_replayer_flushes_the_store_before_it_deletes_the_rows(h: Harness) -> None:
    # Power-cut durability of 202 writes: the store's own write-back of the
    # new points must be done (flush) before the outbox rows that held them go.
    h.embedder.up = False
    for text in ("one", "two", "three"):
        assert (await h.service.add(ALICE, memories(text))).queued
    events: list[tuple[str, int]] = []
    upsert, flush, done = h.store.upsert, h.store.flush, h.outbox.done

    async def spy_upsert(scope: Scope, points: Sequence[StoredPoint]) -> None:
        await upsert(scope, points)
        events.append(("upsert", len(points)))

    async def spy_flush() -> None:
        events.append(("flush", outbox_rows(h.outbox)))  # the rows are all still on disk
        await flush()

    async def spy_done(seqs: Sequence[int]) -> None:
        events.append(("delete", len(seqs)))
        await done(seqs)

    h.store.upsert, h.store.flush = spy_upsert, spy_flush  # type: ignore[method-assign]
    h.outbox.done = spy_done  # type: ignore[method-assign]
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 3
    assert events == [("upsert", 1)] * 3 + [("flush", 3), ("delete", 3)]  # one batch
    assert h.outbox.depth == 0 and outbox_rows(h.outbox) == 0
    assert await h.texts() == ["one", "three", "two"]


async def test_a_failed_flush_keeps_the_rows_and_they_replay_once(
    h: Harness, tmp_path: Path
) -> None:
    h.embedder.up = False
    assert (await h.service.add(ALICE, memories("kept"))).queued
    h.embedder.up = True
    h.embedder_monitor.report_success()
    flush = h.store.flush

    async def failing() -> None:
        raise StoreUnavailable("the memory store failed: No space left on device")

    h.store.flush = failing  # type: ignore[method-assign]
    assert await h.service.drain() == 1  # stored, readable, no longer queued ...
    assert h.outbox.depth == 0 and await h.texts() == ["kept"]
    assert outbox_rows(h.outbox) == 1  # ... but not known to be on disk: the row stays
    assert h.store_monitor.state.status == "unhealthy"
    # As after a power cut: the row is queued again at start, and replays once.
    reopened = Outbox(tmp_path / "outbox.sqlite3")
    reopened.open()
    assert reopened.depth == 1
    reopened.close()
    h.store.flush = flush  # type: ignore[method-assign]
    h.store_monitor.report_success()
    assert await h.service.drain() == 0 and outbox_rows(h.outbox) == 0
    assert await h.texts() == ["kept"]


class UpsertHook:
    """A shared store whose next upsert first runs ``before`` (another
    gateway's forget, landing between this gateway's checks and its upsert)."""

    def __init__(self, store: QdrantServerStore) -> None:
        self._store = store
        self.before: Callable[[], Awaitable[object]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def upsert(self, scope: Scope, points: Sequence[StoredPoint]) -> None:
        if self.before is not None:
            before, self.before = self.before, None
            await before()
        await self._store.upsert(scope, points)


@asynccontextmanager
async def two_gateways(tmp_path: Path) -> AsyncIterator[tuple[Harness, Harness, UpsertHook]]:
    """Gateways a and b, each with its own outbox, on one Qdrant (b's upserts hookable)."""
    shared = QdrantServerStore(":memory:", None, "memories", DIM)
    hooked = UpsertHook(shared)
    async with (
        opened_harness(tmp_path / "a", shared) as a,
        opened_harness(tmp_path / "b", hooked) as b,  # type: ignore[arg-type]
    ):
        yield a, b, hooked


async def test_a_turn_queued_on_another_gateway_before_the_forget_is_not_kept(
    tmp_path: Path,
) -> None:
    async with two_gateways(tmp_path) as (a, b, _):
        await a.service.add(ALICE, memories("alice told a"))
        # A turn on b, begun before alice's forget on a, still queued on b.
        await b.outbox.put(ALICE, memories("alice told b"), since=time.perf_counter())
        streaming = time.perf_counter()  # and a stream on b that ends after the forget
        assert await a.service.forget(ALICE) == 1  # a cannot see b's queue
        await b.outbox.put(ALICE, memories("alice streamed on b"), since=streaming)
        assert await b.service.drain() == 2
        assert await a.texts() == []
        assert b.outbox.depth == 0  # gone, not replayed again
        # What alice says after the forget, on either gateway, is kept.
        await b.outbox.put(ALICE, memories("alice, afterwards"), since=time.perf_counter())
        await b.service.drain()
        await a.service.add(ALICE, memories("alice, to a again"))
        assert await b.texts() == ["alice, afterwards", "alice, to a again"]


async def test_a_forget_that_lands_just_before_another_gateways_upsert_still_wins(
    tmp_path: Path,
) -> None:
    async with two_gateways(tmp_path) as (a, b, hooked):
        await b.outbox.put(ALICE, memories("alice told b"), since=time.perf_counter())
        # b has checked its claim and embedded; a's whole forget (its record
        # and its deletion) lands before b's upsert does.
        hooked.before = lambda: a.service.forget(ALICE)
        assert await b.service.drain() == 1
        assert hooked.before is None  # the forget did run in between
        assert await a.texts() == []
        # b's next write of alice, begun after the forget, is stored as ever.
        await b.service.add(ALICE, memories("alice, afterwards"))
        assert await a.texts() == ["alice, afterwards"]
