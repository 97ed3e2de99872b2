"""ask_for_usage: a stream request asks for usage without its body being re-encoded."""

from __future__ import annotations

import codecs
import json

import pytest

from gateway.api.chat import USAGE_MEMBER, ask_for_usage

BODY = {"model": "m", "messages": [{"role": "user", "content": "héllo 日本"}], "stream": True}


@pytest.mark.parametrize("lead", [b"", b" \n\t\r "])
def test_the_member_goes_first_and_the_clients_bytes_stay(lead: bytes) -> None:
    raw = lead + json.dumps(BODY, ensure_ascii=False, indent=1).encode()
    asked = ask_for_usage(raw)
    assert asked is not None
    assert json.loads(asked) == {**BODY, "stream_options": {"include_usage": True}}
    assert asked == lead + b"{" + USAGE_MEMBER + raw[len(lead) + 1 :]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_wide_encodings_json_also_reads_are_left_to_re_encoding(encoding: str) -> None:
    raw = json.dumps(BODY).encode(encoding)
    assert json.loads(raw) == BODY  # the gateway accepts these bodies
    assert ask_for_usage(raw) is None


def test_a_byte_order_mark_is_left_to_re_encoding() -> None:
    raw = codecs.BOM_UTF8 + json.dumps(BODY).encode()
    assert json.loads(raw) == BODY
    assert ask_for_usage(raw) is None
