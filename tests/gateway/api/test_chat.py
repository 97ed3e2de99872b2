"""The chat endpoint's own checks of a body (gateway.api.chat)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.chat import validate_chat
from gateway.errors import APIError


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # "content" is text or a list of parts: pydantic's location named the
        # union's member ("messages.0.content.str"), which is no key of the body.
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "m", "messages": [{"role": "bogus", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages.0.role"),  # missing
        ({"model": "m"}, "messages"),
    ],
)
def test_a_bad_field_is_named_as_the_client_wrote_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as refused:
        validate_chat(body)
    assert refused.value.status_code == 400
    assert refused.value.param == param and refused.value.message.startswith(f"{param}: ")
