"""The outbox's id index: lookups by id read only the rows that hold the id,
it follows every way a row leaves, and a file from before it gets it filled."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.memory import outbox as outbox_module
from gateway.memory import outbox_rows
from gateway.memory.outbox import Outbox
from gateway.memory.outbox_rows import encode_memories
from gateway.memory.records import NewMemory, Scope, memory_id

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ALICE, BOB = Scope("t", "alice"), Scope("t", "bob")


def memory(text: str) -> NewMemory:
    return NewMemory(text, WHEN, {}, "s", "user")


def indexed(path: Path) -> set[tuple[str, int]]:
    conn = sqlite3.connect(path)
    try:
        return set(conn.execute("SELECT memory_id, seq FROM queued_ids").fetchall())
    finally:
        conn.close()


def insert_row(path: Path, scope: Scope, text: str) -> None:
    """Queue a row as a gateway from before the index did: without its ids."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO outbox (tenant, user_id, memories, enqueued_at) VALUES (?, ?, ?, 0)",
            (scope.tenant, scope.user_id, encode_memories([memory(text)])),
        )
    conn.close()


@contextmanager
def opened(path: Path) -> Iterator[Outbox]:
    box = Outbox(path)
    box.open()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def box(tmp_path: Path):  # type: ignore[no-untyped-def]
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    yield box
    box.close()


async def test_a_lookup_by_id_alone_decodes_only_the_row_that_holds_it(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(300):
        await box.put(Scope("t", f"user-{i}"), [memory(f"text {i}"), memory(f"more {i}")])
    decoded: list[str] = []
    real = outbox_rows.decode_memories

    def counted(raw: str) -> list[NewMemory]:
        decoded.append(raw)
        return real(raw)

    monkeypatch.setattr(outbox_module, "decode_memories", counted)
    wanted = memory_id(Scope("t", "user-123"), "more 123")
    found = await box.find("t", wanted)
    assert found is not None and (found.user_id, found.text) == ("user-123", "more 123")
    assert await box.drop("t", wanted) == "user-123"
    assert len(decoded) == 2  # one row read by each, not the tenant's 300
    assert await box.find("t", wanted) is None
    assert await box.find("other-tenant", memory_id(Scope("t", "user-1"), "text 1")) is None


async def test_the_index_follows_every_way_a_row_leaves(box: Outbox, tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    stored = await box.put(ALICE, [memory("stored")])
    buried = await box.put(ALICE, [memory("buried"), memory("kept")])
    forgotten = await box.put(BOB, [memory("forgotten")])
    assert {seq for _, seq in indexed(path)} == {stored, buried, forgotten}

    await box.done([stored])
    await box.bury(buried, "ValueError: no")  # set aside: still found and dropped by id
    assert {seq for _, seq in indexed(path)} == {buried, forgotten}
    assert await box.drop("t", memory_id(ALICE, "buried")) == "alice"
    assert indexed(path) == {  # the rewritten row keeps its other memory's id
        (memory_id(ALICE, "kept"), buried),
        (memory_id(BOB, "forgotten"), forgotten),
    }
    await box.purge(BOB)
    assert indexed(path) == {(memory_id(ALICE, "kept"), buried)}
    assert await box.drop("t", memory_id(ALICE, "kept"), "alice") == "alice"
    assert indexed(path) == set()


async def test_a_text_without_an_id_is_queued_found_around_and_forgotten(box: Outbox) -> None:
    # A lone surrogate has no UTF-8 to hash; the door refuses it now, but the
    # outbox takes it (the replay sets it aside) rather than failing the write.
    seq = await box.put(ALICE, [memory("poison \ud800"), memory("fine")])
    assert box.is_pending(seq)
    assert await box.find("t", memory_id(ALICE, "fine")) is not None
    assert await box.drop("t", memory_id(ALICE, "nothing such")) is None
    assert await box.purge(ALICE) == {memory_id(ALICE, "fine")}  # forgetting them works
    assert box.depth == 0


async def test_a_file_from_before_the_index_gets_it_filled_on_open(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    conn = sqlite3.connect(path)  # the schema as version 0 made it, with a row in each table
    conn.executescript(
        """
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL,
            user_id TEXT NOT NULL, memories TEXT NOT NULL, enqueued_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
        CREATE TABLE dead (seq INTEGER PRIMARY KEY, tenant TEXT NOT NULL,
            user_id TEXT NOT NULL, memories TEXT NOT NULL, enqueued_at REAL NOT NULL,
            failed_at REAL NOT NULL, error TEXT NOT NULL);
        """
    )
    with conn:
        conn.execute(
            "INSERT INTO dead VALUES (7, ?, ?, ?, 0, 0, 'TypeError: x')",
            ("t", "bob", encode_memories([memory("set aside")])),
        )
    conn.close()
    insert_row(path, ALICE, "queued")

    with opened(path) as box:
        found = await box.find("t", memory_id(ALICE, "queued"))
        assert found is not None and found.text == "queued"
        assert await box.drop("t", memory_id(BOB, "set aside")) == "bob"
        assert box.dead_count() == 0


async def test_rows_queued_without_the_index_are_indexed_on_the_next_open(
    box: Outbox, tmp_path: Path
) -> None:
    # A gateway from before the index ran on this file in between (a downgrade
    # and upgrade again): the row it queued has no ids.
    path = tmp_path / "o.sqlite3"
    insert_row(path, ALICE, "queued by an older gateway")
    box.close()
    with opened(path) as again:
        found = await again.find("t", memory_id(ALICE, "queued by an older gateway"))
        assert found is not None and found.user_id == "alice"
