from __future__ import annotations

import math
from array import array
from datetime import UTC, datetime, timedelta, timezone

from gateway.memory.indexing import (
    Recent,
    RecentTexts,
    VectorCache,
    compose,
    date_label,
    index_texts,
    session_key,
)
from gateway.memory.records import NewMemory, Scope

WHEN = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)


def test_date_label_is_in_utc() -> None:
    assert date_label(WHEN) == "8 May 2023"
    late_local = datetime(2023, 5, 9, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    assert date_label(late_local) == "8 May 2023"


def test_index_texts_carry_the_date_and_the_two_previous_turns() -> None:
    memory = NewMemory("Caroline: yes, last week!", WHEN)
    texts = index_texts(memory, ["Mel: hi", "Mel: did you go to the group?", "Caroline: hey"][-3:])
    assert texts.dense == "Caroline: yes, last week!"  # the text as sent: a query's text
    assert texts.sparse_text == "On 8 May 2023, Caroline: yes, last week!"
    assert (
        texts.sparse_context
        == "Mel: did you go to the group? Caroline: hey Caroline: yes, last week!"
    )
    first = index_texts(memory, [])
    assert first.sparse_context == "Caroline: yes, last week!"


def test_compose_weighs_each_text_by_its_words_and_is_a_unit_vector() -> None:
    one_word, three_words = ("hi", [1.0, 0.0]), ("a b c", [0.0, 1.0])
    v = compose([one_word, one_word, three_words])
    assert math.isclose(math.hypot(*v), 1.0)
    # three words pull three times as hard, and the memory itself (last) double
    assert math.isclose(v[1] / v[0], 3.0 * 2 / 2)
    v = compose([three_words, one_word])
    assert math.isclose(v[1] / v[0], 3.0 / 2)  # three words against one counted double
    assert compose([three_words]) == [0.0, 1.0]


def test_vector_cache_is_a_bounded_lru_of_float32_vectors() -> None:
    cache = VectorCache(max_texts=2)
    cache.put("a", [0.5, 0.25])
    cache.put("b", [1.0, 0.0])
    assert cache.get("a") == [0.5, 0.25]  # a is now the most recently used
    cache.put("c", [0.0, 1.0])
    assert cache.get("b") is None and cache.get("a") is not None
    cache.clear()
    assert cache.get("a") is None


def test_sessions_are_per_user_and_session_less_memories_share_one() -> None:
    alice = Scope("t", "alice")
    assert session_key(alice, "s1") != session_key(Scope("t", "bob"), "s1")
    assert session_key(alice, None) == session_key(alice, None) == ("t", "alice", "")


def _plain(recent: list[Recent] | None) -> list[tuple[str, list[float] | None]]:
    assert recent is not None
    return [(t, None if v is None else list(v)) for t, v in recent]


def test_recent_texts_keep_vectors_as_float32_arrays() -> None:
    """A cached window costs 4 bytes a dimension, not a Python float object's 24+8."""
    cache = RecentTexts()
    vector = [0.1 * i for i in range(384)]
    cache.put(("t", "a", "s"), [("one", vector)])
    [(text, kept)] = cache.get(("t", "a", "s")) or []
    assert text == "one" and isinstance(kept, array) and kept.typecode == "f"
    assert kept.itemsize * len(kept) == 4 * 384
    assert max(abs(a - b) for a, b in zip(kept, vector, strict=True)) < 1e-6 * 38.4
    # and a window composed from the cached vectors is the one from the originals
    fresh = compose([("one", vector), ("two", vector[::-1])])
    cached = compose([("one", kept), ("two", vector[::-1])])
    assert max(abs(a - b) for a, b in zip(fresh, cached, strict=True)) < 1e-6


def test_recent_texts_keep_the_window_and_stay_bounded() -> None:
    cache = RecentTexts(max_sessions=2)
    cache.put(("t", "a", "s"), [("1", None), ("2", [1.0]), ("3", None)])
    assert _plain(cache.get(("t", "a", "s"))) == [("2", [1.0]), ("3", None)]
    cache.put(("t", "b", "s"), [("x", None)])
    cache.put(("t", "c", "s"), [("y", None)])
    assert cache.get(("t", "a", "s")) is None  # least recently used went first
    cache.forget("t", "b")
    assert cache.get(("t", "b", "s")) is None and cache.get(("t", "c", "s")) == [("y", None)]
