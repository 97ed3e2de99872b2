"""MemoryService: writes now or queued, replay, forget and delete, search and
recall, status (with tests.gateway.memory.harness)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from gateway.exceptions import (
    EmbedderRejected,
    MemoryUnavailable,
    OutboxFull,
    OutboxUnavailable,
    StoreUnavailable,
)
from gateway.memory.outbox import Outbox
from gateway.memory.qdrant_store import QdrantServerStore
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.service import MemoryService
from tests.gateway.memory.harness import (
    ALICE,
    DIM,
    WHEN,
    Harness,
    memories,
    opened_harness,
    outbox_rows,
    vector,
)


async def test_a_batch_is_embedded_in_one_call_and_deduplicated(h: Harness) -> None:
    outcome = await h.service.add(ALICE, memories("a", "b", "a"))
    # One result per memory given, in order: the repeat is the same memory.
    assert [(r.memory, r.event) for r in outcome.results] == [
        ("a", "ADD"),
        ("b", "ADD"),
        ("a", "NONE"),
    ]
    assert not outcome.queued and outcome.results[0].id == outcome.results[2].id
    assert h.embedder.calls == 1
    assert await h.texts() == ["a", "b"]
    again = await h.service.add(ALICE, memories("a", "c"))
    assert [r.event for r in again.results] == ["NONE", "ADD"]
    assert h.embedder.calls == 2  # only "c" was embedded
    assert await h.texts() == ["a", "b", "c"]


async def test_store_down_queues_then_replays_exactly_once(h: Harness, tmp_path: Path) -> None:
    await h.service.add(ALICE, memories("before"))
    await h.store.close()  # Qdrant goes away
    outcome = await h.service.add(ALICE, memories("during 1", "during 2"))
    assert outcome.queued and h.outbox.depth == 1
    assert h.store_monitor.state.status == "unhealthy"  # the failure was reported
    with pytest.raises(MemoryUnavailable):
        await h.service.recall(ALICE, "anything", 5, 0.0)
    # Later writes queue behind the first, preserving order.
    assert (await h.service.add(ALICE, memories("during 3"))).queued

    await h.store.open()  # Qdrant is back
    h.store_monitor.report_success()
    calls = h.embedder.calls
    assert await h.service.drain() == 2
    assert h.embedder.calls == calls + 1  # both entries in one embedder call
    assert h.outbox.depth == 0
    assert await h.service.drain() == 0
    assert await h.texts() == ["before", "during 1", "during 2", "during 3"]


async def test_embedder_down_keeps_entries_until_it_returns(h: Harness) -> None:
    h.embedder.up = False
    outcome = await h.service.add(ALICE, memories("x"))
    assert outcome.queued
    assert h.embedder_monitor.state.status == "unhealthy"
    h.embedder_monitor.report_success()  # a stale "healthy": replay tries and fails cleanly
    assert await h.service.drain() == 0 and h.outbox.depth == 1
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 1 and await h.texts() == ["x"]


async def test_a_search_while_a_dependency_is_known_down_fails_at_once(h: Harness) -> None:
    h.embedder_monitor.report_failure("stopped")
    calls = h.embedder.calls
    with pytest.raises(MemoryUnavailable):
        await h.service.search(ALICE, "where do I live", 5)
    assert h.embedder.calls == calls  # not sent: no wait for the embedder's timeout
    h.embedder_monitor.report_success()
    assert await h.service.search(ALICE, "where do I live", 5) == []


async def test_forget_purges_queued_writes(h: Harness) -> None:
    await h.service.add(ALICE, memories("stored"))
    h.embedder.up = False
    await h.service.add(ALICE, memories("queued", "stored"))
    await h.service.add(ALICE, memories("queued"))
    # Two memories: the queued copies of a text are one, and so is a queued
    # text the user has stored already.
    assert await h.service.forget(ALICE) == 2
    h.embedder.up = True
    h.embedder_monitor.report_success()
    await h.service.drain()
    assert await h.texts() == []


async def test_a_full_outbox_refuses_the_write_and_says_so_in_the_log(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.embedder.up = False  # the write has to queue
    assert h.outbox._conn is not None
    pages = h.outbox._conn.execute("PRAGMA page_count").fetchone()[0]
    h.outbox._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full"
    with pytest.raises(OutboxFull, match="full"):
        await h.service.add(ALICE, memories("x" * 20_000))
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "1 memories of tenant t not accepted" in line.getMessage()
    assert h.outbox.depth == 0


async def test_an_outbox_locked_by_another_process_is_a_503_to_retry_not_a_full_disk(
    h: Harness, tmp_path: Path
) -> None:
    # A sqlite3 shell, a backup or a second gateway holding the file's write
    # lock past SQLite's busy timeout: nothing about space, and a retry works.
    h.embedder.up = False  # the write has to queue
    other = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OutboxUnavailable, match="locked") as refused:
            await h.service.add(ALICE, memories("while locked"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert refused.value.status_code == 503 and refused.value.headers()["Retry-After"]
    assert not isinstance(refused.value, OutboxFull)
    outcome = await h.service.add(ALICE, memories("once free"))
    assert outcome.queued and h.outbox.depth == 1


async def test_a_forget_or_delete_the_outbox_cannot_write_is_a_refusal_to_retry_not_a_500(
    h: Harness,
) -> None:
    # The outbox cannot be written (here read-only; in the field, the disk that a
    # backlog queued during an embedder outage filled): purging the user's rows
    # raised sqlite3's error out of forget and delete, a 500 with a traceback.
    # Now it is the refusal a write gets (503 here, 507 for a full disk), and
    # nothing was removed, so the retry is the whole forget.
    await h.service.add(ALICE, memories("stored"))
    h.embedder.up = False
    queued = (await h.service.add(ALICE, memories("queued"))).results[0].id
    assert h.outbox._conn is not None
    h.outbox._conn.execute("PRAGMA query_only = ON")
    with pytest.raises(OutboxUnavailable, match="forget") as refused:
        await h.service.forget(ALICE)
    assert refused.value.status_code == 503 and refused.value.headers()["Retry-After"]
    with pytest.raises(OutboxUnavailable, match="delete"):
        await h.service.delete("t", queued)
    assert h.outbox.depth == 1 and await h.texts() == ["stored"]
    h.outbox._conn.execute("PRAGMA query_only = OFF")
    assert await h.service.forget(ALICE) == 2
    assert h.outbox.depth == 0 and await h.texts() == []


async def test_a_recall_waits_for_the_users_queued_writes_once_not_twice(h: Harness) -> None:
    # A chat turn's recall waited for the user's queued writes, and then the
    # search it runs waited for them again: up to twice read_your_writes_s (4 s)
    # per turn while the replayer was busy with a large backlog.
    monitors = h.embedder_monitor, h.store_monitor
    service = MemoryService(h.store, h.client, h.outbox, h.metrics, *monitors,
                            read_your_writes_s=0.05)  # fmt: skip
    await h.outbox.put(ALICE, memories("queued, and nobody replays it"))
    await service.recall(ALICE, "what did I say?", 5, 0.0)
    assert h.metrics.read_your_writes_timeouts._value.get() == 1
    await service.search(ALICE, "what did I say?", 5)
    assert h.metrics.read_your_writes_timeouts._value.get() == 2


async def test_a_queued_memory_can_be_read_and_deleted_by_its_id(h: Harness) -> None:
    # The API answered 202 with the id: the id works before the memory is stored,
    # and a deleted queued memory is never stored by the replay.
    h.embedder.up = False
    outcome = await h.service.add(ALICE, memories("keep", "delete me"))
    assert outcome.queued
    keep, gone = (r.id for r in outcome.results)
    record = await h.service.get("t", gone)
    assert record is not None and (record.text, record.user_id) == ("delete me", "alice")
    assert await h.service.get("t", gone, user_id="bob") is None
    assert not await h.service.delete("t", gone, user_id="bob")
    assert await h.service.delete("t", gone)
    assert await h.service.get("t", gone) is None and not await h.service.delete("t", gone)
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 1
    assert await h.texts() == ["keep"] and h.outbox.depth == 0
    stored = await h.service.get("t", keep)
    assert stored is not None and stored.text == "keep"


async def test_a_locked_outbox_pauses_the_replay_and_sets_nothing_aside(
    h: Harness, tmp_path: Path
) -> None:
    # Another process holds a write lock on the outbox while the replayer stores
    # a batch: deleting its rows after the store's flush fails. That is an
    # outage of the outbox, not the entries' fault: they are stored, nothing is
    # set aside, and the rows go once the lock is released.
    h.embedder.up = False
    await h.service.add(ALICE, memories("one"))
    await h.service.add(ALICE, memories("two"))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert h.outbox._conn is not None
    h.outbox._conn.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    h.embedder.hold = asyncio.Event()
    drain = asyncio.create_task(h.service.drain())
    await h.embedder.held.wait()  # the rows are read: now the file is locked
    other.execute("BEGIN IMMEDIATE")
    h.embedder.hold.set()
    assert await drain == 2
    assert h.outbox.dead_count() == 0 and h.outbox.depth == 0
    assert h.outbox.unflushed_count() == 2  # their rows are still on disk
    other.execute("ROLLBACK")
    other.close()
    assert await h.service.drain() == 0
    assert h.outbox.unflushed_count() == 0 and h.outbox._execute("SELECT seq FROM outbox") == []
    assert h.outbox.dead_count() == 0 and await h.texts() == ["one", "two"]


async def test_a_rejected_entry_is_set_aside_and_the_rest_replayed(h: Harness) -> None:
    h.embedder.up = False
    await h.service.add(ALICE, memories("good 1"))
    await h.service.add(ALICE, memories("poison"))
    await h.service.add(ALICE, memories("good 2"))
    h.embedder.up = True
    h.embedder.reject = "poison"
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 2
    assert await h.texts() == ["good 1", "good 2"]
    assert h.outbox.depth == 0 and h.outbox.dead_count() == 1


async def test_vectors_arrive_as_base64_or_floats_alike(h: Harness) -> None:
    from_base64 = await h.client.embed(["same text"])
    h.embedder.floats_only = True
    from_floats = await h.client.embed(["same text"])
    expected = np.asarray(vector("same text"), dtype=np.float32).tolist()
    assert from_base64 == [expected]
    assert np.allclose(from_floats, [expected], atol=1e-7)


async def test_replay_asks_the_embedder_for_background_priority(h: Harness) -> None:
    await h.service.add(ALICE, memories("written at once"))
    await h.service.search(ALICE, "a query", 5)
    assert h.embedder.priorities == [0, 0]
    h.embedder.up = False
    await h.service.add(ALICE, memories("queued"))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 1
    # Chat turns' queries go first; the replay of queued writes waits its turn.
    assert h.embedder.priorities == [0, 0, 1]


BOB = Scope("other-tenant", "bob")


async def test_a_poisoned_entry_is_set_aside_and_other_tenants_flow(h: Harness) -> None:
    # Entries the store can never take got into the outbox (before this gateway
    # refused them at the door): a NaN the payload cannot carry, a timestamp
    # with no UTC equivalent, a lone surrogate.
    from datetime import timedelta, timezone

    far_east = timezone(timedelta(hours=14))
    h.embedder.up = False
    await h.service.enqueue(ALICE, [NewMemory("nan", WHEN, {"n": float("nan")})])
    await h.service.enqueue(ALICE, [NewMemory("old", datetime(1, 1, 1, tzinfo=far_east))])
    await h.service.enqueue(ALICE, [NewMemory("poison \ud800 pill", WHEN)])
    await h.service.enqueue(BOB, memories("bob's fine memory"))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    assert await h.service.drain() == 1
    assert h.outbox.depth == 0 and h.outbox.dead_count() == 3
    page, _ = await h.store.list(BOB, 10, None)
    assert [r.text for r in page] == ["bob's fine memory"]
    reasons = sorted(d.error.split(":")[0] for d in h.outbox.dead_entries())
    assert reasons == ["OverflowError", "TypeError", "UnicodeEncodeError"], reasons
    assert h.metrics.outbox_dead._value.get() == 3
    # A later write of the poisoned user is stored at once: nothing blocks it.
    outcome = await h.service.add(ALICE, memories("fine again"))
    assert not outcome.queued and await h.texts() == ["fine again"]


async def test_unstorable_input_is_refused_before_it_is_queued(h: Harness) -> None:
    from gateway.exceptions import MemoryRejected

    h.embedder.up = False  # it would otherwise be queued
    with pytest.raises(MemoryRejected, match="lone surrogate"):
        await h.service.add(ALICE, memories("poison \ud800 pill"))
    with pytest.raises(MemoryRejected, match="nan"):
        await h.service.add(ALICE, [NewMemory("t", WHEN, {"n": float("nan")})])
    assert h.outbox.depth == 0


async def test_another_users_queued_write_does_not_queue_mine(h: Harness) -> None:
    h.embedder.up = False
    assert (await h.service.add(BOB, memories("bob queued"))).queued
    h.embedder.up = True
    h.embedder_monitor.report_success()
    outcome = await h.service.add(ALICE, memories("alice now"))  # no replayer runs here
    assert not outcome.queued and await h.texts() == ["alice now"]
    assert h.outbox.pending(BOB) == 1


async def test_recall_waits_for_the_users_own_queued_turn(h: Harness) -> None:
    h.embedder.up = False
    await h.service.enqueue(BOB, memories(*(f"bob backlog {i}" for i in range(5))))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    await h.service.enqueue(ALICE, memories("I am allergic to peanuts"))
    h.service.start_replayer()
    try:
        hits = await h.service.recall(ALICE, "what am I allergic to?", 5, -1.0)
    finally:
        await h.service.stop_replayer()
    assert [r.text for r in hits] == ["I am allergic to peanuts"]
    # Waited for, the user's write was embedded at a query's priority, on its own.
    query = ["what am I allergic to?"]
    [(priority, texts)] = [
        (p, texts)
        for p, texts in h.embedder.seen
        if texts != query and any("peanuts" in t for t in texts)
    ]
    assert priority == 0 and not any("bob" in t for t in texts), (priority, texts)


async def test_the_memory_apis_reads_find_the_users_turn_just_queued(h: Harness) -> None:
    # A "what do you remember about me" page right after a chat turn: the
    # search and the list store the user's queued turn first, as recall does.
    await h.service.enqueue(ALICE, memories("I am allergic to peanuts"))
    h.service.start_replayer()
    try:
        hits = await h.service.search(ALICE, "what am I allergic to?", 5)
        await h.service.enqueue(ALICE, memories("I live in Lyon"))
        page, _ = await h.service.page(ALICE, 10, None)
    finally:
        await h.service.stop_replayer()
    assert [r.text for r in hits] == ["I am allergic to peanuts"]
    assert sorted(r.text for r in page) == ["I am allergic to peanuts", "I live in Lyon"]


async def test_a_users_write_goes_after_their_queued_ones(h: Harness) -> None:
    h.embedder.up = False
    await h.service.enqueue(ALICE, memories("first"))
    h.embedder.up = True
    h.embedder_monitor.report_success()
    h.service.start_replayer()
    try:
        outcome = await h.service.add(ALICE, memories("second"))
    finally:
        await h.service.stop_replayer()
    assert not outcome.queued and await h.texts() == ["first", "second"]


async def test_a_bulk_write_lets_queries_go_first(h: Harness) -> None:
    await h.service.add(ALICE, memories("one", "two"))
    await h.service.add(ALICE, memories(*(f"bulk {i}" for i in range(40))))
    # One text per memory: the small write at a query's priority, the bulk one
    # behind, in parts (32 + 8 texts).
    assert [p for p, _ in h.embedder.seen] == [0, 1, 1]


# -- what the memory API reads and deletes through the service ----------------


async def test_the_api_pages_gets_and_deletes_within_a_scope(h: Harness) -> None:
    bob = Scope("t", "bob")
    await h.service.add(ALICE, memories("a", "b", "c"))
    await h.service.add(bob, memories("bob's"))
    first, cursor = await h.service.page(ALICE, 2, None)
    rest, end = await h.service.page(ALICE, 2, cursor)
    assert len(first) == 2 and len(rest) == 1 and end is None
    assert sorted(r.text for r in first + rest) == ["a", "b", "c"]
    record = first[0]
    assert await h.service.get("t", record.id) == record
    assert await h.service.get("other tenant", record.id) is None
    assert await h.service.get("t", record.id, user_id="bob") is None
    assert not await h.service.delete("t", record.id, user_id="bob")  # not bob's: kept
    assert not await h.service.delete("other tenant", record.id)
    assert await h.service.delete("t", record.id, user_id="alice")
    assert await h.service.get("t", record.id) is None
    assert not await h.service.delete("t", record.id)
    assert sorted(await h.service.users("t", 10)) == ["alice", "bob"]


async def test_status_says_what_readyz_shows(h: Harness) -> None:
    h.embedder.up = False
    await h.service.add(ALICE, memories("queued"))  # the embedder failed: into the outbox
    status = h.service.status()
    assert (status.backend, status.outbox_depth) == (h.store.name, 1)
    assert not status.ready and status.embedder is h.embedder_monitor
    h.embedder_monitor.report_success()
    assert h.service.status().ready


async def test_the_outbox_report_lists_dead_entries(h: Harness) -> None:
    h.embedder.up = False
    await h.service.add(ALICE, memories("poison 1"))
    await h.service.add(ALICE, memories("poison 2"))
    await h.service.add(ALICE, memories("waits"))
    h.embedder.up, h.embedder.reject = True, "poison"
    h.embedder_monitor.report_success()
    await h.service.drain()
    report = await h.service.outbox_report(1)
    assert (report.depth, report.dead, len(report.dead_entries)) == (0, 2, 1)
    assert report.dead_entries[0].error


async def test_concurrent_identical_adds_each_report_add_and_store_one_memory(
    h: Harness,
) -> None:
    # docs/decisions.md: each write reads the store before it embeds and stores
    # under the writer's lock without reading again, so identical adds in flight
    # together all report ADD; the id is the text's, so they store one memory,
    # with the metadata of the one stored last.
    n = 6
    h.embedder.hold = asyncio.Event()
    adds = [
        asyncio.create_task(h.service.add(ALICE, [NewMemory("same", WHEN, {"n": i})]))
        for i in range(n)
    ]
    for _ in range(n):  # every write has read the store and waits on the embedder
        await asyncio.wait_for(h.embedder.arrivals.get(), 5)
    h.embedder.hold.set()
    outcomes = await asyncio.gather(*adds)
    assert [(r.event, outcome.queued) for outcome in outcomes for r in outcome.results] == [
        ("ADD", False)
    ] * n
    assert len({outcome.results[0].id for outcome in outcomes}) == 1
    page, cursor = await h.service.page(ALICE, 100, None)
    assert [r.text for r in page] == ["same"] and cursor is None
    assert page[0].metadata["n"] in range(n)
    # Once one is stored, the next identical add is told so.
    [again] = (await h.service.add(ALICE, memories("same"))).results
    assert again.event == "NONE" and again.id == page[0].id


async def test_forget_and_delete_by_id_reach_set_aside_entries_and_the_gauge_follows(
    h: Harness,
) -> None:
    h.embedder.up = False
    await h.service.add(ALICE, memories("poison 1"))
    gone = (await h.service.add(ALICE, memories("poison 2"))).results[0].id
    await h.service.add(Scope("t", "bob"), memories("poison 3"))
    h.embedder.up, h.embedder.reject = True, "poison"
    h.embedder_monitor.report_success()
    await h.service.drain()
    assert h.metrics.outbox_dead._value.get() == 3
    assert await h.service.delete("t", gone)  # a set-aside memory, by its 202 id
    assert h.metrics.outbox_dead._value.get() == 2
    assert await h.service.forget(ALICE) == 1  # "poison 1", never stored, went too
    report = await h.service.outbox_report(10)
    assert report.dead == 1 and [e.scope.user_id for e in report.dead_entries] == ["bob"]
    assert h.metrics.outbox_dead._value.get() == 1 == h.outbox.dead_count()


async def test_forget_and_delete_answer_after_the_store_flushed_the_deletion(
    h: Harness,
) -> None:
    """A power cut after "forgotten" or "deleted" must not bring the memory back."""
    await h.service.add(ALICE, memories("one", "two"))
    [kept] = (await h.service.add(Scope("t", "bob"), memories("bob's"))).results
    events: list[str] = []
    delete_scope, delete, flush = h.store.delete_scope, h.store.delete, h.store.flush

    async def spy_delete_scope(scope: Scope) -> int:
        events.append("delete_scope")
        return await delete_scope(scope)

    async def spy_delete(scope: Scope, memory_id: str) -> None:
        events.append("delete")
        await delete(scope, memory_id)

    async def spy_flush() -> None:
        await flush()
        events.append("flushed")

    h.store.delete_scope, h.store.delete = spy_delete_scope, spy_delete  # type: ignore[method-assign]
    h.store.flush = spy_flush  # type: ignore[method-assign]
    assert await h.service.forget(ALICE) == 2
    assert events == ["delete_scope", "flushed"]
    assert await h.service.delete("t", kept.id)
    assert events == ["delete_scope", "flushed", "delete", "flushed"]


async def test_a_direct_write_keeps_its_row_until_the_store_has_flushed_it(
    h: Harness, tmp_path: Path
) -> None:
    # Qdrant Edge holds a new point in memory-mapped files until a flush: a
    # power cut right after the 201 would lose it without the row.
    outcome = await h.service.add(ALICE, memories("stored at once"))
    assert not outcome.queued and await h.texts() == ["stored at once"]
    assert outbox_rows(h.outbox) == 1 and h.outbox.depth == 0  # on disk, and nobody waits for it
    assert h.service.status().outbox_depth == 0
    # A power cut now: the row replays at start (idempotently: the id is the same).
    reopened = Outbox(tmp_path / "outbox.sqlite3")
    reopened.open()
    assert reopened.depth == 1
    reopened.close()
    flushed_with_rows: list[int] = []
    flush = h.store.flush

    async def spy_flush() -> None:
        flushed_with_rows.append(outbox_rows(h.outbox))
        await flush()

    h.store.flush = spy_flush  # type: ignore[method-assign]
    assert await h.service.drain() == 0  # nothing to replay: only the flush, then the row goes
    assert flushed_with_rows == [1] and outbox_rows(h.outbox) == 0
    assert h.embedder.calls == 1  # the row was never replayed


async def test_a_direct_write_that_meets_an_outage_is_queued_once_from_its_row(
    h: Harness,
) -> None:
    upsert = h.store.upsert

    async def down(*_: object) -> None:
        raise StoreUnavailable("connection refused")

    h.store.upsert = down  # type: ignore[method-assign,assignment]
    outcome = await h.service.add(ALICE, memories("during the outage"))
    assert outcome.queued and h.outbox.depth == 1 and outbox_rows(h.outbox) == 1  # one row, not two
    h.store.upsert = upsert  # type: ignore[method-assign]
    h.store_monitor.report_success()
    assert await h.service.drain() == 1
    assert await h.texts() == ["during the outage"] and outbox_rows(h.outbox) == 0


async def test_a_refused_direct_write_leaves_no_row(h: Harness) -> None:
    h.embedder.reject = "poison"
    with pytest.raises(EmbedderRejected):
        await h.service.add(ALICE, memories("poison pill"))
    assert outbox_rows(h.outbox) == 0 and h.outbox.depth == 0


async def test_a_direct_write_whose_client_leaves_is_still_stored(h: Harness) -> None:
    # Accepted once its row committed: the replay finishes what the client left.
    h.embedder.hold = asyncio.Event()
    write = asyncio.create_task(h.service.add(ALICE, memories("left mid-write")))
    await h.embedder.held.wait()
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    h.embedder.hold.set()
    assert h.outbox.depth == 1
    assert await h.service.drain() == 1
    assert await h.texts() == ["left mid-write"] and outbox_rows(h.outbox) == 0


async def test_a_direct_write_to_a_qdrant_server_has_no_row(tmp_path: Path) -> None:
    # The server has each upsert when it answers (wait=true): nothing to journal.
    async with opened_harness(tmp_path, QdrantServerStore(":memory:", None, "m", DIM)) as h:
        assert not (await h.service.add(ALICE, memories("on the server"))).queued
        assert outbox_rows(h.outbox) == 0


@pytest.mark.parametrize("store_up", [True, False], ids=["stored", "queued"])
async def test_a_delete_while_a_direct_write_runs_leaves_the_writes_row(
    h: Harness, store_up: bool
) -> None:
    # The delete took the write's held row: its 201 was no longer backed until the
    # flush, and after an outage its 202 said "queued" with nothing queued.
    h.embedder.hold = asyncio.Event()
    write = asyncio.create_task(h.service.add(ALICE, memories("in flight")))
    await h.embedder.held.wait()
    assert not await h.service.delete("t", memory_id(ALICE, "in flight"))  # before the write
    if not store_up:

        async def down(*_: object) -> None:
            raise StoreUnavailable("connection refused")

        h.store.upsert = down  # type: ignore[method-assign,assignment]
    h.embedder.hold.set()
    outcome = await write
    assert outcome.queued is not store_up and outbox_rows(h.outbox) == 1
    if not store_up:
        assert h.outbox.depth == 1
        assert await h.service.get("t", outcome.results[0].id) is not None  # queued, by id
