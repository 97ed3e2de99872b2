"""The outbox's in-memory view (gateway.memory.pending): per user, without
scanning the queue."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

from gateway.memory.pending import PendingView
from gateway.memory.records import Scope

ALICE, BOB = Scope("t", "alice"), Scope("t", "bob")


class NoScan(dict[int, Scope]):
    """The seq -> user map, refusing to be walked: a lookup that scanned the
    whole queue (200,000 entries deep, bench/results/outbox_scale.md) fails."""

    def _scan(self, *_: Any) -> NoReturn:
        raise AssertionError("the whole queue was scanned")

    __iter__ = items = keys = values = _scan  # type: ignore[assignment]


@pytest.fixture
def view() -> PendingView:
    view = PendingView()
    for seq in range(1, 1001):
        view.track(seq, BOB)
    view.track(2001, ALICE)
    view.track(2002, ALICE)
    view._scope_of = NoScan(view._scope_of)
    return view


def test_a_users_entries_are_found_without_scanning_the_queue(view: PendingView) -> None:
    assert view.seqs(ALICE) == {2001, 2002} and view.count(ALICE) == 2
    assert view.seqs(Scope("t", "carol")) == set() and view.count(Scope("t", "carol")) == 0
    assert view.is_pending(2001) and not view.is_pending(3000)
    view.untrack([2001, 3000])  # an unknown seq changes nothing
    assert view.seqs(ALICE) == {2002} and view.depth == 1001
    view.untrack(range(1, 1001))  # a forget of Bob
    assert view.seqs(BOB) == set() and view.depth == 1 and view.count(BOB) == 0
    view.untrack([2002])
    assert view.depth == 0 and view.seqs(ALICE) == set()


def test_seqs_is_a_copy_the_caller_can_keep(view: PendingView) -> None:
    # wait_stored keeps the set while the replayer untracks what it stored.
    mine = view.seqs(ALICE)
    view.untrack([2001])
    assert mine == {2001, 2002} and view.seqs(ALICE) == {2002}


def test_a_rewritten_entry_is_not_current_for_the_reader_that_read_it(view: PendingView) -> None:
    assert view.revisions([2001, 2002]) == {2001: 0, 2002: 0}
    view.rewritten([2001])
    assert not view.is_current(2001, 0) and view.is_current(2001, 1)
    view.untrack([2001])
    assert not view.is_current(2001, 1) and view.revisions([2001]) == {2001: 0}


def test_the_dead_count_follows_what_is_set_aside_and_removed() -> None:
    view = PendingView()
    view.set_dead(3)
    view.add_dead(1)
    view.add_dead(-2)
    assert view.dead == 2


def test_a_stored_entry_waits_no_more_and_its_row_waits_for_the_flush(view: PendingView) -> None:
    view.settle([2001, 3000])  # 3000 never waited: nothing to settle
    assert not view.is_pending(2001) and view.seqs(ALICE) == {2002} and view.depth == 1001
    assert view.unflushed() == {2001} and view.unflushed_count() == 1
    assert view.unflushed_age() >= 0
    view.untrack([2001])  # flushed, its row deleted
    assert view.unflushed() == set() and view.unflushed_age() == 0
