"""One contract, two adapters: Qdrant Edge (in-process) and the Qdrant server adapter
(through qdrant-client's local ``:memory:`` mode)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway import datadir
from gateway.datadir import MIB, DiskSpace
from gateway.exceptions import DimensionMismatch, StoreUnavailable
from gateway.memory.edge_store import EdgeStore
from gateway.memory.qdrant_store import QdrantServerStore
from gateway.memory.records import Condition, NewMemory, Scope, memory_id
from gateway.memory.sparse import Bm25Encoder, Sparse
from gateway.memory.store import (
    ContextVectors,
    PointVectors,
    QueryVectors,
    StoredPoint,
    VectorStore,
)

DIM = 4
ALICE = Scope("acme", "alice")
BOB = Scope("acme", "bob")
EVIL_ALICE = Scope("globex", "alice")  # same user id, another tenant
WHEN = datetime(2024, 1, 1, tzinfo=UTC)

Factory = Callable[[int], VectorStore]


@pytest.fixture(params=["edge", "server"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    def make(dim: int) -> VectorStore:
        if request.param == "edge":
            return EdgeStore(tmp_path / "edge", dim)
        return QdrantServerStore(":memory:", None, "memories", dim)

    return make


@pytest.fixture
async def store(make_store: Factory) -> AsyncIterator[VectorStore]:
    store = make_store(DIM)
    await store.open()
    yield store
    await store.close()


BM25 = Bm25Encoder()
NO_WORDS = Sparse([], [])
_clock = itertools.count(1)


def point(
    scope: Scope, text: str, vector: list[float], session: str | None = None, **metadata: object
) -> StoredPoint:
    sparse = BM25.document(text)
    vectors = PointVectors(vector, vector, sparse, sparse)
    memory = NewMemory(text, WHEN, metadata, session_id=session)
    return StoredPoint(memory_id(scope, text), vectors, memory, next(_clock))


def dense(vector: list[float]) -> QueryVectors:
    """A query by vector alone (no words), so only the dense lists rank."""
    return QueryVectors(vector, NO_WORDS)


async def seed(store: VectorStore) -> None:
    await store.upsert(ALICE, [
        point(ALICE, "alice likes tea", [1, 0, 0, 0], dia_id="D1"),
        point(ALICE, "alice owns a cat", [0, 1, 0, 0], dia_id="D2"),
    ])  # fmt: skip
    await store.upsert(BOB, [point(BOB, "bob likes tea", [1, 0, 0, 0])])
    await store.upsert(EVIL_ALICE, [point(EVIL_ALICE, "other tenant's alice", [1, 0, 0, 0])])


async def test_search_sees_only_the_scope(store: VectorStore) -> None:
    await seed(store)
    hits = await store.search(ALICE, dense([1, 0, 0, 0]), limit=10)
    assert [h.text for h in hits] == ["alice likes tea", "alice owns a cat"]
    assert hits[0].score is not None and hits[0].score > hits[1].score
    assert [h.text for h in await store.search(BOB, dense([1, 0, 0, 0]), 10)] == ["bob likes tea"]
    other = await store.search(EVIL_ALICE, dense([1, 0, 0, 0]), 10)
    assert [h.text for h in other] == ["other tenant's alice"]
    assert await store.search(Scope("acme", "nobody"), dense([1, 0, 0, 0]), 10) == []


async def test_search_filters_and_min_score(store: VectorStore) -> None:
    await seed(store)
    by_dia = await store.search(
        ALICE, dense([1, 0, 0, 0]), 10, [Condition("metadata.dia_id", ("D2",))]
    )
    assert [h.text for h in by_dia] == ["alice owns a cat"]
    either = [Condition("metadata.dia_id", ("D1", "D2"))]
    assert len(await store.search(ALICE, dense([1, 0, 0, 0]), 10, either)) == 2
    close = await store.search(ALICE, dense([1, 0, 0, 0]), 10, min_score=0.5)
    assert [h.text for h in close] == ["alice likes tea"]


async def test_existing_ids_respects_scope(store: VectorStore) -> None:
    await seed(store)
    ids = [memory_id(ALICE, "alice likes tea"), memory_id(BOB, "bob likes tea")]
    assert await store.existing_ids(ALICE, ids) == {ids[0]}


async def test_get_is_limited_to_the_tenant(store: VectorStore) -> None:
    await seed(store)
    key = memory_id(ALICE, "alice likes tea")
    record = await store.get("acme", key)
    assert record is not None and record.user_id == "alice" and record.metadata == {"dia_id": "D1"}
    assert await store.get("globex", key) is None
    assert await store.get("acme", memory_id(ALICE, "never stored")) is None


async def test_list_pages_cover_everything_once(store: VectorStore) -> None:
    texts = [f"memory {i}" for i in range(7)]
    await store.upsert(ALICE, [point(ALICE, t, [1, i, 0, 0]) for i, t in enumerate(texts)])
    await store.upsert(BOB, [point(BOB, "bob's", [1, 0, 0, 0])])
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = await store.list(ALICE, 3, cursor)
        assert len(page) <= 3
        seen += [r.text for r in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(texts)


async def test_delete_only_within_scope(store: VectorStore) -> None:
    await seed(store)
    key = memory_id(ALICE, "alice likes tea")
    assert await store.delete(BOB, key) is False
    assert await store.delete(EVIL_ALICE, key) is False
    assert await store.get("acme", key) is not None
    assert await store.delete(ALICE, key) is True
    assert await store.get("acme", key) is None
    assert await store.delete(ALICE, key) is False


async def test_forgetting_a_user_leaves_everyone_else(store: VectorStore) -> None:
    await seed(store)
    assert await store.delete_scope(ALICE) == 2
    assert await store.search(ALICE, dense([1, 0, 0, 0]), 10) == []
    assert len(await store.search(BOB, dense([1, 0, 0, 0]), 10)) == 1
    assert len(await store.search(EVIL_ALICE, dense([1, 0, 0, 0]), 10)) == 1


async def test_upsert_of_the_same_id_does_not_duplicate(store: VectorStore) -> None:
    await store.upsert(ALICE, [point(ALICE, "same", [1, 0, 0, 0])])
    await store.upsert(ALICE, [point(ALICE, "same", [1, 0, 0, 0])])
    page, _ = await store.list(ALICE, 10, None)
    assert [r.text for r in page] == ["same"]


async def test_another_dimension_is_refused(make_store: Factory, tmp_path: Path) -> None:
    first = make_store(DIM)
    await first.open()
    if isinstance(first, EdgeStore):
        await first.close()
        with pytest.raises(DimensionMismatch, match="vector"):
            await EdgeStore(tmp_path / "edge", DIM * 2).open()
    else:
        # Same client, same collection, asked again with another size.
        first._dimension = DIM * 2  # type: ignore[attr-defined]
        with pytest.raises(DimensionMismatch, match="'text': 4"):
            await first.open()
        await first.close()


async def test_edge_store_survives_reopen(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", DIM)
    await store.open()
    await store.upsert(ALICE, [point(ALICE, "durable", [1, 0, 0, 0])])
    await store.close()
    again = EdgeStore(tmp_path / "edge", DIM)
    await again.open()
    assert [r.text for r in await again.search(ALICE, dense([1, 0, 0, 0]), 5)] == ["durable"]
    await again.close()


async def test_an_edge_engine_error_is_the_store_being_unavailable(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", DIM)
    await store.open()
    await store.upsert(ALICE, [point(ALICE, "kept", [1, 0, 0, 0])])
    store._shard.close()  # type: ignore[union-attr]  # the engine fails under the adapter
    with pytest.raises(StoreUnavailable, match="Shard is not initialized"):
        await store.search(ALICE, dense([1, 0, 0, 0]), 5)
    with pytest.raises(StoreUnavailable):
        await store.upsert(ALICE, [point(ALICE, "more", [0, 1, 0, 0])])
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()
    again = EdgeStore(tmp_path / "edge", DIM)
    await again.open()  # the lock was released
    await again.close()


async def test_edge_store_refuses_a_second_process_on_the_same_dir(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "edge", DIM)
    await store.open()
    with pytest.raises(RuntimeError, match="in use"):
        await EdgeStore(tmp_path / "edge", DIM).open()
    await store.close()


async def test_users_lists_a_tenants_users_only(store: VectorStore) -> None:
    await seed(store)
    assert await store.users("acme", 10) == ["alice", "bob"]
    assert await store.users("globex", 10) == ["alice"]
    assert await store.users("nobody", 10) == []


async def test_words_find_what_vectors_miss(store: VectorStore) -> None:
    await store.upsert(ALICE, [
        point(ALICE, "Melanie painted a sunrise over the lake", [0, 1, 0, 0]),
        point(ALICE, "the weather was nice", [1, 0, 0, 0]),
    ])  # fmt: skip
    query = QueryVectors([1, 0, 0, 0], BM25.query("What did Melanie paint?"))
    hits = await store.search(ALICE, query, 1)
    assert [h.text for h in hits] == ["Melanie painted a sunrise over the lake"]


async def test_recent_gives_a_sessions_last_memories_in_write_order(store: VectorStore) -> None:
    await store.upsert(ALICE, [point(ALICE, f"s1 turn {i}", [1, i, 0, 0], "s1") for i in range(4)])
    await store.upsert(ALICE, [point(ALICE, "no session", [1, 0, 0, 0])])
    await store.upsert(BOB, [point(BOB, "bob s1", [1, 0, 0, 0], "s1")])
    assert await store.recent(ALICE, "s1", 2) == ["s1 turn 2", "s1 turn 3"]
    assert await store.recent(ALICE, None, 2) == ["no session"]
    assert await store.recent(ALICE, "s2", 2) == []


async def test_neighbours_are_the_memories_either_side_in_the_same_session(
    store: VectorStore,
) -> None:
    # Written a nanosecond apart at today's clock (as one write's points are),
    # where Qdrant's float ordering cannot tell neighbours apart.
    now = 1_796_657_429_109_907_359
    turns = [
        replace(point(ALICE, f"s1 turn {i}", [1, i, 0, 0], "s1"), written_at=now + i)
        for i in range(6)
    ]
    await store.upsert(ALICE, turns)
    await store.upsert(ALICE, [point(ALICE, "no session", [1, 0, 0, 0])])
    await store.upsert(BOB, [point(BOB, "bob s1", [1, 0, 0, 0], "s1")])
    gap = await store.neighbours(ALICE, turns[3].id, 2)
    assert gap is not None
    assert [p.text for p in gap.before] == ["s1 turn 1", "s1 turn 2"]
    assert [p.text for p in gap.after] == ["s1 turn 4", "s1 turn 5"]
    assert [p.id for p in gap.after] == [turns[4].id, turns[5].id]
    # Stored vectors are unit vectors (cosine): [1, 4, 0, 0] comes back normalised.
    assert gap.after[0].vector == pytest.approx([1 / 17**0.5, 4 / 17**0.5, 0, 0], abs=1e-6)
    first = await store.neighbours(ALICE, turns[0].id, 2)
    assert first is not None and first.before == [] and len(first.after) == 2
    alone = await store.neighbours(ALICE, memory_id(ALICE, "no session"), 2)
    assert alone is not None and alone.before == [] and alone.after == []
    assert await store.neighbours(BOB, turns[3].id, 2) is None  # not Bob's memory


async def test_update_context_replaces_only_the_window_vectors_in_scope(
    store: VectorStore,
) -> None:
    await store.upsert(ALICE, [point(ALICE, "alice likes tea", [0, 1, 0, 0])])
    alice_tea = memory_id(ALICE, "alice likes tea")
    new = ContextVectors(alice_tea, [0, 0, 1, 0], BM25.document("zanzibar"))
    await store.update_context(BOB, [new])  # another user's scope: nothing changes
    assert await store.search(ALICE, dense([0, 0, 1, 0]), 10, min_score=0.9) == []
    await store.update_context(ALICE, [new])
    [by_window] = await store.search(ALICE, dense([0, 0, 1, 0]), 10, min_score=0.9)
    [by_text] = await store.search(ALICE, dense([0, 1, 0, 0]), 10, min_score=0.9)
    assert by_window.text == by_text.text == "alice likes tea"  # its text vector stays


async def test_flush_keeps_what_was_written(store: VectorStore) -> None:
    await store.upsert(ALICE, [point(ALICE, "flushed", [1, 0, 0, 0])])
    await store.flush()
    await store.flush()  # nothing new: still fine
    assert await store.existing_ids(ALICE, [memory_id(ALICE, "flushed")])


async def test_a_forget_is_recorded_for_other_gateways_only_on_a_shared_store(
    store: VectorStore,
) -> None:
    await store.note_forget(ALICE, 100.0)
    await store.note_forget(ALICE, 250.0)  # forgotten again: the latest counts
    await store.note_forget(BOB, 50.0)
    found = await store.forgotten_at([ALICE, BOB, EVIL_ALICE])
    if isinstance(store, EdgeStore):  # one process owns the shard: nobody to tell
        assert found == {}
    else:
        assert found == {ALICE: 250.0, BOB: 50.0}  # globex's alice was never forgotten


async def test_an_edge_store_short_of_space_still_deletes_within_half_its_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Below the reserve writes wait in the outbox; a forget or a delete, what
    # frees space and what a user asks for then, may use half of it.
    free = {"bytes": 100 * MIB}
    monkeypatch.setattr(datadir, "free_bytes", lambda path: free["bytes"])
    store = EdgeStore(tmp_path / "edge", DIM, DiskSpace(tmp_path, 64 * MIB))
    await store.open()
    try:
        await seed(store)
        free["bytes"] = 40 * MIB
        with pytest.raises(StoreUnavailable, match="writes need 64 MiB"):
            await store.upsert(ALICE, [point(ALICE, "one more", [1, 0, 0, 0])])
        assert await store.delete(ALICE, memory_id(ALICE, "alice likes tea"))
        assert await store.delete_scope(BOB) == 1
        free["bytes"] = 20 * MIB
        with pytest.raises(StoreUnavailable, match="deletes need 32 MiB"):
            await store.delete_scope(ALICE)
    finally:
        await store.close()
