"""What goes upstream (gateway.api.outgoing): the client's bytes unless something
must change, and then exactly that; a stream asks for usage without re-encoding."""

from __future__ import annotations

import codecs
import copy
import json

import pytest

from gateway.api.chat import into_messages
from gateway.api.messages import add_to_system
from gateway.api.outgoing import USAGE_MEMBER, Incoming, Inject, Json, Outgoing, ask_for_usage
from gateway.api.responses import add_memories
from gateway.errors import APIError
from gateway.upstream.pool import Target
from gateway.upstream.replica import Upstream

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


def target(model: str | None = None) -> Target:
    return Target(Upstream("u", "http://u/v1", http=None), model)  # type: ignore[arg-type]


def incoming(body: Json, *, raw: bytes | None = None, stream: bool = False) -> Incoming:
    raw = json.dumps(body, ensure_ascii=False, indent=1).encode() if raw is None else raw
    return Incoming(raw, json.loads(raw), body["model"], into_messages, chat_stream=stream)


USAGE = {"include_usage": True}
CHAT: Json = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], "temperature": 0}


def test_nothing_to_change_sends_the_clients_own_bytes() -> None:
    request = incoming(CHAT)
    out = request.outgoing()
    assert out.content is request.raw and out.usage_asked
    assert out.bytes_for(target()) is request.raw
    assert out.bytes_for(target("m")) is request.raw  # the target's name is the client's


def test_the_gateways_memory_object_is_removed() -> None:
    request = incoming({**CHAT, "memory": {"user_id": "u1", "top_k": 3}})
    assert request.outgoing().content == json.dumps(CHAT).encode()
    assert request.fields == CHAT
    # ``null`` is removed too: a strict upstream (OpenAI's API as the fallback)
    # refuses a parameter it does not know, whatever its value.
    request = incoming({**CHAT, "memory": None})
    assert request.outgoing().content == json.dumps(CHAT).encode()
    assert b"memory" not in request.outgoing().content
    # Without the member the client's bytes go as they are.
    request = incoming(CHAT)
    assert request.outgoing().content is request.raw


def test_memories_go_into_the_leading_system_message() -> None:
    request = incoming({**CHAT, "memory": {"user_id": "u1"}})
    before = copy.deepcopy(request.body)
    out = request.outgoing("- likes tea")
    system = {"role": "system", "content": "- likes tea"}
    expected = {**CHAT, "messages": [system, *CHAT["messages"]]}
    assert out.content == json.dumps(expected).encode()
    assert out.body == expected
    assert request.body == before  # the client's body is never changed
    assert request.outgoing("- likes tea") == out  # pure: the same value again


def test_a_stream_asks_for_usage_in_the_clients_bytes() -> None:
    request = incoming({**CHAT, "stream": True}, stream=True)
    out = request.outgoing()
    assert out.content == b"{" + USAGE_MEMBER + request.raw[1:]
    assert not out.usage_asked  # the gateway asked: the client does not get the event


@pytest.mark.parametrize(
    ("options", "sent", "asked"),
    [
        ({"include_usage": True}, {"include_usage": True}, True),
        (
            {"continuous_usage_stats": True},
            {"continuous_usage_stats": True, "include_usage": True},
            False,
        ),
        ({"include_usage": False}, {"include_usage": True}, False),
        (None, {"include_usage": True}, False),  # null: as if absent, never a splice before it
        ("nonsense", "nonsense", False),  # not ours to fix: the upstream answers it
    ],
)
def test_a_streams_own_options_are_kept(options: object, sent: object, asked: bool) -> None:
    request = incoming({**CHAT, "stream": True, "stream_options": options}, stream=True)
    out = request.outgoing()
    assert json.loads(out.content)["stream_options"] == sent
    assert out.usage_asked is asked
    if sent == options:
        assert out.content is request.raw


def test_a_stream_with_memories_is_encoded_once_with_both() -> None:
    request = incoming({**CHAT, "stream": True}, stream=True)
    out = request.outgoing("- likes tea")
    sent = json.loads(out.content)
    assert list(sent) == [*CHAT, "stream", "stream_options"]  # the client's order, then ours
    assert sent["messages"][0] == {"role": "system", "content": "- likes tea"}
    assert sent["stream_options"] == {"include_usage": True}


def test_a_target_that_knows_the_model_by_another_name_gets_that_name() -> None:
    request = incoming({**CHAT, "stream": True}, stream=True)
    out = request.outgoing("- likes tea")
    renamed = json.loads(out.bytes_for(target("org/model-v2")))
    assert renamed == {**json.loads(out.content), "model": "org/model-v2"}
    assert list(renamed) == list(json.loads(out.content))  # the model stays where it was


def test_a_resend_without_memories_is_encoded_as_the_first_send_was() -> None:
    request = incoming(CHAT)
    resent = request.outgoing(None, resend=True)
    assert resent.content == json.dumps(CHAT).encode() and resent.content is not request.raw


def test_a_body_that_is_not_json_goes_as_it_is() -> None:
    raw = b"\x00\x01 audio"
    out = Outgoing(raw)
    assert out.bytes_for(target("other")) is raw


DEV = {"role": "developer", "content": [{"type": "input_text", "text": "D"}]}


@pytest.mark.parametrize(
    ("inject", "body", "field", "expected"),
    [
        (into_messages, {"messages": [{"role": "system", "content": "Be brief."}]}, "messages",
         [{"role": "system", "content": "Be brief.\n\nM"}]),
        (add_memories, {"instructions": "Be brief.", "input": "hi"}, "instructions",
         "Be brief.\n\nM"),
        (add_memories, {"input": [DEV]}, "input",
         [{**DEV, "content": [*DEV["content"], {"type": "input_text", "text": "M"}]}]),
        (add_memories, {"input": "hi"}, "instructions", "M"),
        (add_to_system, {"system": "Be brief.", "messages": []}, "system", "Be brief.\n\nM"),
        (add_to_system, {"system": [{"type": "text", "text": "S"}], "messages": []}, "system",
         [{"type": "text", "text": "S"}, {"type": "text", "text": "M"}]),
        (add_to_system, {"messages": []}, "system", "M"),
    ],
)  # fmt: skip
def test_each_api_puts_memories_in_its_system_prompt_without_changing_the_body(
    inject: Inject, body: Json, field: str, expected: object
) -> None:
    before = copy.deepcopy(body)
    assert inject(body, "M")[field] == expected
    assert body == before


def test_a_body_too_deep_to_re_encode_is_a_400_not_a_recursion_error() -> None:
    deep: Json = {}
    for _ in range(5000):  # deeper than any stack: built here, as no parser would
        deep = {"x": deep}
    body: Json = {"model": "m", "memory": {}, "messages": [], "x": deep}
    request = Incoming(b"{}", body, "m", into_messages)
    with pytest.raises(APIError) as caught:
        request.outgoing("a memory")
    assert caught.value.status_code == 400
    with pytest.raises(APIError):
        Outgoing(b"{}", "m", {"model": "m", "x": deep}).bytes_for(target("other"))
