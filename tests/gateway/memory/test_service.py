"""MemoryService with a real Qdrant Edge store and an embedder behind httpx's
MockTransport (unit level; the e2e tests use the real embedder process)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.exceptions import MemoryUnavailable, OutboxFull
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.indexing import session_key
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope
from gateway.memory.service import MemoryService
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor

DIM = 8
ALICE = Scope("t", "alice")
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:DIM]]


class Embedder:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.reject: str | None = None
        self.floats_only = False  # an embedder that ignores encoding_format
        self.priorities: list[int] = []
        self.inputs: list[str] = []  # every text embedded, in order
        self.seen: list[tuple[int, list[str]]] = []  # (priority, texts) of each call
        # While ``hold`` is set and not yet released, each call waits on it
        # (after setting ``held``): a write stopped between its reads and its store.
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        if self.hold is not None and not self.hold.is_set():
            self.held.set()
            await self.hold.wait()
        return self.handle(request)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("refused", request=request)
        self.calls += 1
        body = json.loads(request.content)
        texts = body["input"]
        self.inputs += texts
        self.priorities.append(body.get("priority", 0))
        self.seen.append((body.get("priority", 0), texts))
        if any(self.reject and self.reject in t for t in texts):
            return httpx.Response(400, json={"error": {"message": "input too long"}})
        as_base64 = body.get("encoding_format") == "base64" and not self.floats_only
        data = [
            {"index": i, "embedding": encoded(vector(t)) if as_base64 else vector(t)}
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})


def encoded(floats: list[float]) -> str:
    return base64.b64encode(np.asarray(floats, dtype="<f4").tobytes()).decode()


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.embedder = Embedder()
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.embedder.handle_async))
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.client = EmbedderClient(self.http, "http://embedder/v1", DIM, self.metrics)
        self.store = EdgeStore(tmp_path / "edge", DIM)
        self.outbox = Outbox(tmp_path / "outbox.sqlite3")
        self.embedder_monitor = Monitor("embedder", self.client.probe)
        self.store_monitor = Monitor("vector_store", self.store.ping)
        self.service = MemoryService(self.store, self.client, self.outbox, self.metrics,
                                     self.embedder_monitor, self.store_monitor)  # fmt: skip

    async def texts(self) -> list[str]:
        page, _ = await self.store.list(ALICE, 100, None)
        return sorted(r.text for r in page)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    harness.outbox.open()
    await harness.store.open()
    harness.embedder_monitor.report_success()
    harness.store_monitor.report_success()
    yield harness
    await harness.store.close()
    harness.outbox.close()
    await harness.http.aclose()


def memories(*texts: str) -> list[NewMemory]:
    return [NewMemory(t, WHEN) for t in texts]


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
