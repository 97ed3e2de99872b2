"""The Responses API's recall query: the latest user text of ``input``."""

from __future__ import annotations

from gateway.api.responses import latest_input


def test_the_query_is_the_input_string_or_the_latest_user_item() -> None:
    assert latest_input({"input": "  where is Lyon? "}) == "where is Lyon?"
    items = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    assert latest_input({"input": items}) == "second"
    assert latest_input({}) == ""


def test_an_input_of_only_invisible_characters_is_no_query() -> None:
    # Zero-width spaces and direction marks survive str.strip; embedded, they
    # would rank memories at random, and stored, be recalled as an empty quote.
    assert latest_input({"input": "\u200b\u200f\ufeff "}) == ""
