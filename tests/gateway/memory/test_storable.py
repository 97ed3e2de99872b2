from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.memory.records import NewMemory, Scope
from gateway.memory.storable import unstorable_reason

WHEN = datetime(2024, 1, 1, tzinfo=UTC)
ALICE = Scope("t", "alice")


def deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (NewMemory("poison \ud800 pill", WHEN), "lone surrogate"),
        (NewMemory("t", WHEN, {"n": math.nan}), "n is nan"),
        (NewMemory("t", WHEN, {"n": [1, math.inf]}), "n[1] is inf"),
        (NewMemory("t", WHEN, {"n": 1 << 64}), "beyond 64 bits"),
        (NewMemory("t", WHEN, {"k\udc00": 1}), "key that is not valid"),
        (NewMemory("t", WHEN, deep(500)), "nested deeper"),
        (
            NewMemory("t", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))),
            "timestamp cannot be stored",
        ),
    ],
)
def test_what_the_store_can_never_take_is_named(memory: NewMemory, expected: str) -> None:
    reason = unstorable_reason(ALICE, memory)
    assert reason is not None and expected in reason


def test_ordinary_memories_pass() -> None:
    memory = NewMemory("I live in Lisbon ✓", WHEN, {"a": [1, 2.5, None, True, {"b": "c"}]})
    assert unstorable_reason(ALICE, memory) is None
    assert unstorable_reason(ALICE, NewMemory("t", WHEN, deep(20))) is None
