from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.memory.forgets import Forgotten
from gateway.memory.outbox import Outbox
from gateway.memory.outbox_rows import decode_memories, encode_memories
from gateway.memory.records import NewMemory, Scope, memory_id

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ALICE, BOB = Scope("t", "alice"), Scope("t", "bob")


def memory(text: str) -> NewMemory:
    return NewMemory(text, WHEN, {"k": [1, None]}, "s", "user", "chat")


def test_encoding_round_trips() -> None:
    items = [memory("a"), NewMemory("b", WHEN)]
    assert decode_memories(encode_memories(items)) == items


async def test_entries_come_back_in_order_and_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    await box.put(ALICE, [memory("first")])
    await box.put(BOB, [memory("second")])
    assert box.depth == 2
    box.close()  # as if the process died: nothing but the file remains

    again = Outbox(tmp_path / "o.sqlite3")
    again.open()
    assert again.depth == 2
    [head] = await again.head()
    assert head.scope == ALICE and head.memories == [memory("first")]
    await again.failed(head.seq, "embedder down")
    [head2] = await again.head()
    assert head2.seq == head.seq and head2.attempts == 1
    assert [e.scope for e in await again.head(10)] == [ALICE, BOB]  # in order
    await again.done([head.seq])
    [head3] = await again.head()
    assert head3.scope == BOB
    assert again.depth == 1
    await again.done([head3.seq, 999])  # an unknown seq changes nothing
    assert again.depth == 0 and await again.head() == []


async def test_an_entry_carries_when_its_request_began_across_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    before = time.time()
    await box.put(ALICE, [memory("an API write, queued")])
    await box.put(BOB, [memory("a turn begun 30 s ago")], since=time.perf_counter() - 30)
    after = time.time()
    box.close()
    again = Outbox(tmp_path / "o.sqlite3")
    again.open()
    queued, turn = await again.head(2)
    assert before <= queued.began_at <= after
    assert before - 30 <= turn.began_at <= after - 30
    again.close()


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_a_file_removed_under_an_open_outbox_refuses_puts(tmp_path: Path, how: str) -> None:
    # SQLite would go on writing to the removed file: accepted, then lost.
    box = Outbox(tmp_path / "data" / "o.sqlite3")
    box.open()
    await box.put(ALICE, [memory("before")])
    assert box.lost() is None
    shutil.rmtree(tmp_path / "data")
    if how == "replaced":  # another process made the data dir anew
        Outbox(tmp_path / "data" / "o.sqlite3").open()
    assert box.lost() is not None and "restart the gateway" in box.lost()  # type: ignore[operator]
    with pytest.raises(sqlite3.OperationalError, match=how if how == "replaced" else "gone"):
        await box.put(ALICE, [memory("after")])
    assert box.depth == 1  # the refused one was never counted
    box.close()


async def test_wal_mode_is_on(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    mode = sqlite3.connect(tmp_path / "o.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()


async def test_bury_keeps_the_entry_in_dead(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    seq = await box.put(ALICE, [memory("bad")])
    await box.bury(seq, "rejected")
    assert box.depth == 0 and box.dead_count() == 1
    assert await box.head() == []


async def test_purge_drops_only_that_user(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    await box.put(ALICE, [memory("a1")])
    await box.put(BOB, [memory("b1")])
    await box.put(ALICE, [memory("a2")])
    assert await box.purge(ALICE) == {memory_id(ALICE, "a1"), memory_id(ALICE, "a2")}
    assert box.depth == 1
    [head] = await box.head()
    assert head.scope == BOB


async def test_a_queued_memory_is_found_and_dropped_by_id(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    both = await box.put(ALICE, [memory("keep"), memory("drop")])
    alone = await box.put(ALICE, [memory("drop")])  # queued twice: both go
    await box.put(BOB, [memory("drop")])  # Bob's text has another id
    wanted = memory_id(ALICE, "drop")
    [before] = [e for e in await box.head(10) if e.seq == both]
    found = await box.find("t", wanted)
    assert found is not None and (found.user_id, found.text, found.id) == ("alice", "drop", wanted)
    assert await box.find("t", wanted, user_id="bob") is None
    assert await box.find("other tenant", wanted) is None
    assert await box.drop("t", wanted, user_id="bob") is None  # not Bob's: nothing changes
    assert await box.drop("t", wanted) == "alice"
    assert await box.find("t", wanted) is None and await box.drop("t", wanted) is None
    assert not box.is_pending(alone) and (box.pending(ALICE), box.depth) == (1, 2)
    [after] = [e for e in await box.head(10) if e.seq == both]
    assert [m.text for m in after.memories] == ["keep"]
    # A replay that read the entry before the drop sees it is not current any more.
    assert not box.is_current(before) and box.is_current(after)
    box.close()
    again = Outbox(tmp_path / "o.sqlite3")
    again.open()
    assert [[m.text for m in e.memories] for e in await again.head(10)] == [["keep"], ["drop"]]


async def test_a_locked_file_never_stalls_what_the_event_loop_reads(tmp_path: Path) -> None:
    # Another process (a backup, an operator's sqlite3 shell) holds a write lock
    # on the file: a put's thread waits out SQLite's busy timeout holding the
    # connection's lock (held here by the test). What the loop reads about
    # waiting entries must not wait with it.
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    first = await box.put(ALICE, [memory("a1")])
    [entry] = await box.head()

    def reads() -> tuple[set[int], bool, int, int]:
        return box.pending_seqs(ALICE), box.is_current(entry), box.pending(ALICE), box.depth

    with box._lock:
        # In a thread, so that a reader stuck on the lock fails the test, not hangs it.
        answered = await asyncio.wait_for(asyncio.to_thread(reads), 5)
    assert answered == ({first}, True, 1, 1)
    box.close()


async def test_the_depth_stays_exact_while_writes_and_replays_overlap(tmp_path: Path) -> None:
    # Found by the soak: the in-memory depth read before awaiting the delete
    # thread lost the puts that landed meanwhile, and went negative.
    outbox = Outbox(tmp_path / "o.sqlite3")
    outbox.open()
    scope = Scope("t", "u")
    for i in range(20):
        await outbox.put(scope, [NewMemory(f"seed {i}", WHEN)])

    async def replay() -> None:
        while entries := await outbox.head(3):
            await outbox.done([e.seq for e in entries])

    async def write(i: int) -> None:
        await outbox.put(scope, [NewMemory(f"new {i}", WHEN)])

    await asyncio.gather(replay(), *(write(i) for i in range(100)), replay())
    rows = sqlite3.connect(tmp_path / "o.sqlite3").execute("SELECT COUNT(*) FROM outbox")
    assert outbox.depth == rows.fetchone()[0]
    outbox.close()


async def test_pending_is_counted_per_user_and_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    a1 = await box.put(ALICE, [memory("a1")])
    await box.put(BOB, [memory("b1")])
    await box.put(ALICE, [memory("a2")])
    assert (box.pending(ALICE), box.pending(BOB), box.depth) == (2, 1, 3)
    await box.done([a1])
    assert box.pending(ALICE) == 1 and not box.is_pending(a1)
    box.close()
    again = Outbox(tmp_path / "o.sqlite3")
    again.open()
    assert (again.pending(ALICE), again.pending(BOB), again.depth) == (1, 1, 2)
    assert await again.purge(ALICE) == {memory_id(ALICE, "a2")}
    assert (again.pending(ALICE), again.depth) == (0, 1)


async def test_head_is_bounded_by_text_size_and_puts_wanted_users_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    for i in range(3):
        await box.put(BOB, [memory("b" * 1000 + str(i))])
    await box.put(ALICE, [memory("a" * 10)])
    assert len(await box.head(10, max_chars=2500)) == 2  # 1001 + 1001, not the third
    assert len(await box.head(10, max_chars=10)) == 1  # one entry, however large
    first = await box.head(2, first=[ALICE])
    assert [e.scope for e in first] == [ALICE, BOB]  # Alice's before Bob's older ones


async def test_dead_entries_say_why(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    seq = await box.put(ALICE, [memory("x"), memory("y")])
    await box.bury(seq, "ValueError: NaN")
    [dead] = box.dead_entries()
    assert dead.to_json()["error"] == "ValueError: NaN" and dead.memories == 2
    assert dead.scope == ALICE and box.depth == 0 and box.pending(ALICE) == 0


def on_disk(path: Path, needle: str) -> list[str]:
    """The outbox's files (the database, its WAL) that hold ``needle``'s bytes."""
    files = [path, path.with_name(path.name + "-wal")]
    return [f.name for f in files if f.exists() and needle.encode() in f.read_bytes()]


async def test_purge_drops_the_users_dead_entries_and_leaves_no_text_on_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.open()
    queued = await box.put(ALICE, [memory("alice-secret queued")])
    poison = await box.put(ALICE, [memory("alice-secret poison"), memory("alice-secret 2")])
    await box.put(BOB, [memory("bob-poison")])
    await box.bury(poison, "rejected")
    [(bob, *_)] = box._execute("SELECT seq FROM outbox WHERE user_id = 'bob'")
    await box.bury(bob, "rejected")
    assert (box.dead, box.dead_count()) == (2, 2)
    assert on_disk(path, "alice-secret")  # the test can see the text when it is there
    ids = await box.purge(ALICE)
    assert ids == {memory_id(ALICE, t) for t in ("alice-secret queued", "alice-secret poison",
                                                 "alice-secret 2")}  # fmt: skip
    assert not box.is_pending(queued) and box.depth == 0
    assert (box.dead, box.dead_count()) == (1, 1)  # Bob's stays
    [left] = box.dead_entries()
    assert left.scope == BOB
    assert on_disk(path, "alice-secret") == [] and on_disk(path, "bob-poison")
    box.close()
    again = Outbox(path)
    again.open()
    assert again.dead == 1 and await again.purge(ALICE) == set()
    again.close()


async def test_drop_by_id_reaches_dead_entries_and_leaves_no_text_on_disk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.open()
    seq = await box.put(ALICE, [memory("keep-this"), memory("drop-this")])
    await box.bury(seq, "rejected")
    assert await box.drop("t", memory_id(ALICE, "drop-this"), "bob") is None  # not Bob's
    assert await box.drop("t", memory_id(ALICE, "drop-this")) == "alice"
    [dead] = box.dead_entries()
    assert dead.memories == 1 and box.dead == 1
    assert on_disk(path, "drop-this") == [] and on_disk(path, "keep-this")
    assert await box.drop("t", memory_id(ALICE, "keep-this"), "alice") == "alice"
    assert box.dead_entries() == [] and (box.dead, box.dead_count()) == (0, 0)
    assert on_disk(path, "keep-this") == []
    box.close()


@pytest.mark.parametrize("how", ["forget", "delete by id"])
async def test_a_removed_text_leaves_the_wal_even_when_its_row_went_before(
    tmp_path: Path, how: str
) -> None:
    # Stored and deleted long ago (a replayed entry, a direct write's journal after
    # the flush): no row holds the text, but the WAL's frames did, until restart.
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.open()
    seq = await box.put(ALICE, [memory("alice-secret stored")])
    box.settle([seq])
    await box.done([seq])
    assert on_disk(path, "alice-secret")  # the test sees the text where it is
    if how == "forget":
        assert await box.purge(ALICE) == set()
    else:
        assert await box.drop("t", memory_id(ALICE, "alice-secret stored")) is None
    assert on_disk(path, "alice-secret") == []
    box.close()


async def test_a_bury_after_a_purge_counts_no_dead_entry(tmp_path: Path) -> None:
    # The replayer sets an entry aside after its user was forgotten meanwhile:
    # there is no row to move, and the count must not grow.
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    seq = await box.put(ALICE, [memory("bad")])
    await box.purge(ALICE)
    await box.bury(seq, "rejected")
    assert (box.dead, box.dead_count()) == (0, 0)
    box.close()


async def test_a_put_begun_before_its_users_purge_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    before = time.perf_counter()
    await box.purge(ALICE)
    with pytest.raises(Forgotten):
        await box.put(ALICE, [memory("a reply made from forgotten memories")], since=before)
    assert box.depth == 0 and box._execute("SELECT COUNT(*) FROM outbox") == [(0,)]
    await box.put(BOB, [memory("another user")], since=before)
    await box.put(ALICE, [memory("a turn begun after the forget")], since=time.perf_counter())
    await box.put(ALICE, [memory("an API write")])  # no start given: never refused
    assert box.pending(ALICE) == 2 and box.depth == 3
    box.close()


def disk_bytes(path: Path) -> int:
    """What the outbox's files (the database and its WAL) take."""
    files = [path, path.with_name(path.name + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


async def fill(box: Outbox, entries: int, size: int) -> list[int]:
    """Queue ``entries`` entries of ``size`` characters each (a backlog)."""
    return [await box.put(ALICE, [memory(f"{i:06d}" + "x" * size)]) for i in range(entries)]


async def test_a_drained_backlog_gives_its_disk_space_back(tmp_path: Path) -> None:
    # An outage queued 24 MB; once it is all stored, the file must not keep it.
    path = tmp_path / "o.sqlite3"
    box = Outbox(path)
    box.open()
    kept = await box.put(BOB, [memory("set aside, and kept")])
    await box.bury(kept, "ValueError: NaN")
    seqs = await fill(box, 600, 40_000)
    full = disk_bytes(path)
    assert full > 24_000_000

    await box.done(seqs[:-1])  # one entry still waits: the file keeps its size
    assert disk_bytes(path) >= full * 0.9
    await box.done(seqs[-1:])
    assert box.depth == 0
    assert disk_bytes(path) < 1_000_000, disk_bytes(path)
    # Nothing that was still there is lost by the rewrite, and the file goes on working.
    [dead] = box.dead_entries()
    assert dead.seq == kept and dead.scope == BOB
    await box.put(ALICE, [memory("after")])
    box.close()
    again = Outbox(path)
    again.open()
    [entry] = await again.head()
    assert entry.memories == [memory("after")] and again.dead_count() == 1


async def test_a_file_drained_before_a_restart_shrinks_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    never = Outbox(path, shrink_free_bytes=1 << 40)  # a gateway that did not shrink it
    never.open()
    await never.done(await fill(never, 300, 40_000))
    never.close()
    assert disk_bytes(path) > 12_000_000

    box = Outbox(path)
    box.open()
    assert disk_bytes(path) < 1_000_000, disk_bytes(path)
    assert box.depth == 0 and await box.head() == []
