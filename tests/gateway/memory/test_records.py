from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.memory.records import (
    Condition,
    NewMemory,
    Scope,
    check_metadata,
    dedupe_texts,
    from_payload,
    is_blank,
    memory_id,
    parse_filters,
    parse_timestamp,
    to_payload,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_memory_id_is_deterministic_and_scoped() -> None:
    alice = Scope("acme", "alice")
    assert memory_id(alice, "likes tea") == memory_id(Scope("acme", "alice"), "likes tea")
    assert memory_id(alice, "likes tea") != memory_id(Scope("acme", "bob"), "likes tea")
    assert memory_id(alice, "likes tea") != memory_id(Scope("globex", "alice"), "likes tea")
    assert memory_id(alice, "likes tea") != memory_id(alice, "likes coffee")


def test_scope_separator_prevents_collisions() -> None:
    assert memory_id(Scope("a", "b\x1fc"), "t") != memory_id(Scope("a\x1fb", "c"), "t")


def test_payload_round_trip_keeps_metadata_unchanged() -> None:
    metadata = {"dia_id": "D1:3", "nested": {"list": [1, 2.5, None, "x"]}, "flag": True}
    memory = NewMemory("text", NOW, metadata, "s1", "user", "api")
    payload = to_payload(Scope("t", "u"), memory)
    record = from_payload("id-1", payload, 0.5)
    assert record.metadata == metadata
    assert record.created_at == NOW
    assert (record.user_id, record.session_id, record.role) == ("u", "s1", "user")
    assert record.score == 0.5
    assert payload["tenant"] == "t" and payload["created_ts"] == NOW.timestamp()


def test_timestamp_without_zone_is_utc() -> None:
    assert parse_timestamp("2023-05-08T13:56:00", NOW) == datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    plus2 = parse_timestamp("2023-05-08T13:56:00+02:00", NOW)
    assert plus2.utcoffset() == timedelta(hours=2)
    assert plus2.astimezone(UTC).hour == 11
    assert parse_timestamp(None, NOW) == NOW
    with pytest.raises(ValueError):
        parse_timestamp("last tuesday", NOW)


def test_stored_time_is_normalised_to_utc() -> None:
    local = datetime(2023, 5, 8, 15, 0, tzinfo=timezone(timedelta(hours=2)))
    payload = to_payload(Scope("t", "u"), NewMemory("x", local))
    assert payload["created_at"] == "2023-05-08T13:00:00+00:00"


def test_filters_map_to_metadata_and_cannot_reach_scope_fields() -> None:
    assert parse_filters({"dia_id": "D1:3", "session_id": ["a", "b"]}) == [
        Condition("metadata.dia_id", ("D1:3",)),
        Condition("session_id", ("a", "b")),
    ]
    assert parse_filters({"tenant": "other"}) == [Condition("metadata.tenant", ("other",))]
    for bad in ({"a.b": 1}, {"x": {"nested": 1}}, {"x": []}, {"": 1}, {"x": 1.5}):
        with pytest.raises(ValueError):
            parse_filters(bad)
    assert parse_filters(None) == []


def test_dedupe_keeps_first_occurrence() -> None:
    items = [NewMemory("a", NOW), NewMemory("b", NOW), NewMemory("a", NOW, {"later": 1})]
    assert [(m.text, dict(m.metadata)) for m in dedupe_texts(items)] == [("a", {}), ("b", {})]


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [({"k": ["user", 1, True]}, "all strings or all integers"),
     ({"k": [True, False]}, "all strings or all integers"),
     ({"k": 1 << 63}, "64 bits"), ({"k": [-(1 << 63) - 1]}, "64 bits"),
     ({"k": []}, "1 to 100"), ({"k": list(range(101))}, "1 to 100"),
     ({"k": "a\ud800"}, "lone surrogate"), ({"k": 1.5}, "expected a string"),
     ({"k": {"nested": 1}}, "expected a string")],
)  # fmt: skip
def test_filters_qdrant_cannot_match_are_refused(filters: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_filters(filters)


def test_filters_keep_what_qdrant_can_match() -> None:
    assert parse_filters({"k": [(1 << 63) - 1, -(1 << 63)]}) == [
        Condition("metadata.k", ((1 << 63) - 1, -(1 << 63)))
    ]
    assert parse_filters({"k": True}) == [Condition("metadata.k", (True,))]


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [(_nested(6), "deeper than 5"), (_nested(450), "deeper than 5"),
     (_nested(5000), "deeper than 5"), ({"a": [[[[[1]]]]]}, "deeper than 5"),
     ({"n": float("nan")}, "NaN"), ({"n": [float("-inf")]}, "NaN"),
     ({"n": 1 << 64}, "64 bits"), ({"s": "\udc00"}, "lone surrogate"),
     ({"\ud800": 1}, "lone surrogate"), ({"blob": "z" * 300}, "at most 256")],
)  # fmt: skip
def test_metadata_that_cannot_be_stored_is_refused(
    metadata: dict[str, object], fragment: str
) -> None:
    problem = check_metadata(metadata, 256)
    assert problem is not None and fragment in problem


def test_metadata_within_the_limits_passes() -> None:
    assert check_metadata(_nested(5), 256) is None
    assert (
        check_metadata({"n": (1 << 63) - 1, "f": 1.5, "b": True, "z": None, "s": "é"}, 256) is None
    )


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_timestamps_with_no_utc_equivalent_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_timestamp(value, NOW)


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("", True),
        (" \n\t\u3000", True),
        ("\u200b\u200c\u200d\u2060", True),  # zero-width space, joiners, word joiner
        ("\u200e\u200f\u202e\ufeff", True),  # direction marks, an override, the BOM
        ("\x00\x07", True),
        ("\u200bhi\u200b", False),
        ("نعم", False),
        ("🙂", False),
    ],
)
def test_blank_means_nothing_to_read(text: str, blank: bool) -> None:
    assert is_blank(text) is blank
