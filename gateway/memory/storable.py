"""Can this memory be stored at all? Known before it is accepted.

A write the store can never take must be refused when it arrives (a 400),
not accepted into the outbox where every replay would fail on it. What makes
a memory unstorable is a property of its payload alone: text that is not
valid Unicode (a lone surrogate cannot be encoded as UTF-8), a number JSON
and Qdrant cannot carry (NaN, infinities, integers beyond 64 bits), a
timestamp that has no UTC equivalent (``0001-01-01T00:00:00+14:00`` is
before year 1 in UTC), nesting deeper than the engines recurse.

The walk is iterative, so a deeply nested value cannot overflow Python's
stack here either. The outbox's replayer still sets aside whatever fails for
another reason (gateway.memory.service), so this check is a courtesy to the
client, not the only guard.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.memory.records import NewMemory, Scope, to_payload

MAX_DEPTH = 64
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


def unstorable_reason(scope: Scope, memory: NewMemory) -> str | None:
    """Why the store could never take this memory, or None when it can."""
    try:
        payload = to_payload(scope, memory)
    except (OverflowError, ValueError) as exc:
        return f"timestamp cannot be stored: {exc}"
    return _value_problem(payload)


def _value_problem(root: Any) -> str | None:
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{where or 'value'} is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            if not _is_utf8(value):
                return f"{where or 'text'} contains a lone surrogate (not valid Unicode)"
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                return f"{where} is an integer beyond 64 bits"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{where} is {value}, which JSON cannot carry"
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or not _is_utf8(key):
                    return f"{where or 'object'} has a key that is not valid Unicode text"
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
        else:
            return f"{where} has an unsupported type {type(value).__name__}"
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
