from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from gateway.memory.indexing import RecentTexts, date_label, index_texts, session_key
from gateway.memory.records import NewMemory, Scope

WHEN = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def test_date_label_is_in_utc() -> None:
    assert date_label(WHEN) == "8 May 2023"
    late_local = datetime(2023, 5, 9, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    assert date_label(late_local) == "8 May 2023"


def test_index_texts_carry_the_date_and_the_two_previous_turns() -> None:
    memory = NewMemory("Caroline: yes, last week!", WHEN)
    texts = index_texts(memory, ["Mel: hi", "Mel: did you go to the group?", "Caroline: hey"][-3:])
    assert texts.text == "On 8 May 2023, Caroline: yes, last week!"
    assert (
        texts.context_sparse
        == "Mel: did you go to the group? Caroline: hey Caroline: yes, last week!"
    )
    assert texts.context_dense == f"On 8 May 2023, {texts.context_sparse}"
    first = index_texts(memory, [])
    assert first.context_sparse == "Caroline: yes, last week!"


def test_sessions_are_per_user_and_session_less_memories_share_one() -> None:
    alice = Scope("t", "alice")
    assert session_key(alice, "s1") != session_key(Scope("t", "bob"), "s1")
    assert session_key(alice, None) == session_key(alice, None) == ("t", "alice", "")


def test_recent_texts_keep_the_window_and_stay_bounded() -> None:
    cache = RecentTexts(max_sessions=2)
    cache.put(("t", "a", "s"), ["1", "2", "3"])
    assert cache.get(("t", "a", "s")) == ["2", "3"]
    cache.put(("t", "b", "s"), ["x"])
    cache.put(("t", "c", "s"), ["y"])
    assert cache.get(("t", "a", "s")) is None  # least recently used went first
    cache.forget("t", "b")
    assert cache.get(("t", "b", "s")) is None and cache.get(("t", "c", "s")) == ["y"]
