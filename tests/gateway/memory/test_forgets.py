"""The bounded record of recent forgets (gateway.memory.forgets)."""

from __future__ import annotations

from gateway.memory.forgets import RecentForgets
from gateway.memory.records import Scope

ALICE, BOB = Scope("t", "alice"), Scope("t", "bob")


def test_a_request_begun_before_its_users_forget_is_refused_and_one_after_is_not() -> None:
    forgets = RecentForgets()
    assert not forgets.since(ALICE, 1.0)  # never forgotten
    forgets.forgot(ALICE, 10.0)
    assert forgets.since(ALICE, 9.5) and forgets.since(ALICE, 10.0)  # the same instant: refused
    assert not forgets.since(ALICE, 10.5)  # began after the forget
    assert not forgets.since(BOB, 9.5)  # another user
    assert not forgets.since(Scope("other", "alice"), 9.5)  # the same id in another tenant


def test_forgetting_a_user_again_moves_their_time_on() -> None:
    forgets = RecentForgets(limit=2)
    forgets.forgot(ALICE, 1.0)
    forgets.forgot(BOB, 2.0)
    forgets.forgot(ALICE, 3.0)  # Alice is the newest now, Bob the oldest
    forgets.forgot(Scope("t", "carol"), 4.0)  # pushes Bob out, not Alice
    assert forgets.since(ALICE, 2.5) and len(forgets) == 2


def test_the_record_is_bounded_and_what_falls_out_becomes_a_floor() -> None:
    forgets = RecentForgets(limit=3)
    for i in range(10):
        forgets.forgot(Scope("t", f"u{i}"), float(i))
    assert len(forgets) == 3
    # u0..u6 fell out; the latest of them, at 6.0, is the floor: whoever a
    # request of before that is for, it may have been forgotten since.
    assert forgets.since(Scope("t", "u2"), 1.5) and forgets.since(BOB, 5.9)
    assert not forgets.since(BOB, 6.1) and not forgets.since(Scope("t", "u2"), 6.1)
    assert forgets.since(Scope("t", "u9"), 8.5)  # still in the record


def test_one_tenants_flood_of_forgets_leaves_the_others_turns_alone() -> None:
    # Forgets of users that need not exist, thousands of them, raised one floor
    # for all: every other tenant's turns in flight were then not stored.
    forgets = RecentForgets(limit=3)
    for i in range(10):
        forgets.forgot(Scope("noisy", f"u{i}"), float(i))
    assert forgets.since(Scope("noisy", "anyone"), 5.9)
    assert not forgets.since(ALICE, 0.5) and not forgets.since(Scope("other", "x"), 5.9)
