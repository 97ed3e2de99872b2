"""Which field names the memory user, the same on every API."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.identity import memory_user
from gateway.api.schemas import MemoryOptions
from gateway.errors import APIError

ALL: dict[str, Any] = {
    "safety_identifier": "by-safety-id",
    "user": "by-user",
    "metadata": {"user_id": "by-metadata"},
}


def test_precedence_memory_then_safety_identifier_then_user_then_metadata() -> None:
    assert memory_user(ALL, MemoryOptions(user_id="by-memory")) == "by-memory"
    assert memory_user(ALL, None) == "by-safety-id"
    assert memory_user(ALL, MemoryOptions(top_k=3)) == "by-safety-id"
    assert memory_user({**ALL, "safety_identifier": None}, None) == "by-user"
    assert memory_user({"user": "", "metadata": {"user_id": "by-metadata"}}, None) == "by-metadata"
    assert memory_user({"metadata": {"other": 1}}, None) is None
    assert memory_user({"metadata": "not an object"}, None) is None


@pytest.mark.parametrize(
    "body",
    [
        {"safety_identifier": 7},
        {"user": "u" * 257},
        {"metadata": {"user_id": ["x"]}},
        {"safety_identifier": "a\ud800b"},  # not Unicode: it could not be a scope
        {"user": "\udc00"},
        {"metadata": {"user_id": "x\udfff"}},
    ],
)
def test_a_malformed_user_field_is_a_400_naming_it(body: dict[str, Any]) -> None:
    with pytest.raises(APIError) as caught:
        memory_user(body, None)
    assert caught.value.status_code == 400
    assert caught.value.param in ("safety_identifier", "user", "metadata.user_id")
