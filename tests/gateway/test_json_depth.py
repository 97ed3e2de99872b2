"""How deep a request's JSON nests, read without recursion, and chat's parser refusing past it."""

from __future__ import annotations

import json

import pytest

from gateway.api.chat import parse_json_object
from gateway.errors import APIError
from gateway.json_depth import MAX_JSON_DEPTH, TOO_DEEP, nests_deeper


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + "1" + close * depth).encode()


def test_the_depth_counts_arrays_and_objects_alike() -> None:
    mixed = b'{"a": [' * 300 + b"1" + b"]}" * 300  # 600 levels, objects and arrays
    assert nests_deeper(mixed, 599) and not nests_deeper(mixed, 600)
    assert nests_deeper(nested(MAX_JSON_DEPTH + 1)) and not nests_deeper(nested(MAX_JSON_DEPTH))


def test_brackets_inside_strings_are_text_not_nesting() -> None:
    text = json.dumps({"s": "[{" * 5000 + '\\" ]] \\\\" [[', "t": ["}" * 3000]}).encode()
    assert not nests_deeper(text, 3)
    assert nests_deeper(json.dumps({"s": "[[[", "deep": [[[[1]]]]}).encode(), 4)


def test_many_brackets_side_by_side_are_not_deep() -> None:
    wide = json.dumps({"input": [[1, 2]] * 10_000}).encode()  # 20,000 brackets, 3 levels
    assert not nests_deeper(wide) and not nests_deeper(wide, 3) and nests_deeper(wide, 2)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 100_000])
def test_chat_refuses_a_body_past_the_limit_saying_so(depth: int) -> None:
    raw = b'{"model": "m", "x": ' + nested(depth - 1) + b"}"
    with pytest.raises(APIError) as caught:
        parse_json_object(raw)
    assert (caught.value.status_code, caught.value.code) == (400, "invalid_json")
    assert caught.value.message == TOO_DEEP
    assert f"{MAX_JSON_DEPTH} levels at most" in TOO_DEEP


def test_chat_reads_a_body_at_the_limit_and_still_calls_broken_json_invalid() -> None:
    raw = b'{"model": "m", "x": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    assert parse_json_object(raw)["model"] == "m"
    with pytest.raises(APIError) as caught:
        parse_json_object(b'{"x": "' + b"[" * 2000 + b"}")  # unterminated: broken, not deep
    assert caught.value.message == "request body is not valid JSON"
