"""The Responses and Messages stream readers: relayed bytes, text, usage, completion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.upstream.sse import StreamAccumulator, error_event
from gateway.upstream.sse_apis import (
    MessagesStream,
    ResponsesStream,
    is_response,
    message_error_event,
    message_text,
    response_error_event,
    response_text,
)
from tests.fakes.llm_protocols import messages_answer, responses_answer

BASE = {"id": "chatcmpl-fake1", "created": 1, "model": "m"}
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
REPLY = "echo: one two three"


def stream_of(answer: Any) -> bytes:
    return b"".join(answer(BASE, REPLY, USAGE, True, {}))


def feed_in_pieces(acc: StreamAccumulator, data: bytes, size: int) -> bytes:
    out = b"".join(acc.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + acc.flush()


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_a_responses_stream_is_relayed_as_is_and_read(size: int) -> None:
    data = stream_of(responses_answer)
    seen: list[str] = []
    acc = ResponsesStream(on_id=seen.append)
    assert feed_in_pieces(acc, data, size) == data
    assert (acc.text, acc.completed, seen) == (REPLY, True, ["resp_chatcmpl-fake1"])
    assert acc.usage is not None and acc.usage["input_tokens"] == 3


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_a_messages_stream_is_relayed_as_is_and_read(size: int) -> None:
    data = stream_of(messages_answer)
    acc = MessagesStream()
    assert feed_in_pieces(acc, data, size) == data
    assert (acc.text, acc.completed) == (REPLY, True)
    # input tokens from message_start and output tokens from message_delta, together
    assert acc.usage == {"input_tokens": 3, "output_tokens": 4}


@pytest.mark.parametrize("reader", [ResponsesStream, MessagesStream])
def test_a_stream_cut_before_its_end_is_not_complete(reader: type[StreamAccumulator]) -> None:
    answer = responses_answer if reader is ResponsesStream else messages_answer
    events = answer(BASE, REPLY, USAGE, True, {})
    acc = reader(rename_to=None, drop_usage=False)
    acc.feed(b"".join(events[:-2]))
    assert not acc.completed


def test_error_events_fail_the_stream() -> None:
    acc = ResponsesStream()
    acc.feed(stream_of(responses_answer)[:200] + b"\n\n" + response_error_event("boom", "x"))
    assert not acc.completed and acc.error is not None
    failed = {"type": "response.failed", "response": {"error": {"message": "no"}}}
    acc = ResponsesStream()
    acc.feed(b"event: response.failed\ndata: " + json.dumps(failed).encode() + b"\n\n")
    assert not acc.completed and acc.error == {"message": "no"}
    acc = MessagesStream()
    acc.feed(message_error_event("overloaded", "x"))
    assert not acc.completed and acc.error == {"type": "api_error", "message": "overloaded"}


def test_the_error_events_are_each_apis_own() -> None:
    kind, data = response_error_event("boom", "upstream_stream_error").split(b"\n")[:2]
    assert kind == b"event: error"
    assert json.loads(data[5:]) == {
        "type": "error", "code": "upstream_stream_error", "message": "boom", "param": None,
        "sequence_number": 0,
    }  # fmt: skip
    kind, data = message_error_event("boom", "ignored").split(b"\n")[:2]
    assert kind == b"event: error"
    assert json.loads(data[5:]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "boom"},
    }


@pytest.mark.parametrize("size", [1, 64, 1 << 20])
def test_a_responses_error_event_continues_the_streams_sequence(size: int) -> None:
    events = responses_answer(BASE, REPLY, USAGE, True, {})
    acc = ResponsesStream()
    feed_in_pieces(acc, b"".join(events[:-1]), size)  # cut before response.completed
    last = json.loads(events[-2].split(b"data: ", 1)[1])["sequence_number"]
    assert last > 0  # the test means something: some events were numbered
    kind, data = acc.error_event("boom", "upstream_stream_error").split(b"\n")[:2]
    assert kind == b"event: error"
    assert json.loads(data[5:])["sequence_number"] == last + 1
    # Before any numbered event (or in a stream without numbers) it is the first.
    assert (
        json.loads(ResponsesStream().error_event("b", "c").split(b"data: ")[1])["sequence_number"]
        == 0
    )


def test_each_streams_reader_writes_its_apis_error_event() -> None:
    assert StreamAccumulator().error_event("boom", "x") == error_event("boom", "x")
    assert MessagesStream().error_event("boom", "x") == message_error_event("boom", "x")


def test_an_alias_gets_the_clients_model_name_back_in_streams() -> None:
    for reader, answer, key in (
        (ResponsesStream, responses_answer, "response"),
        (MessagesStream, messages_answer, "message"),
    ):
        acc = reader(rename_to="alias", drop_usage=False)
        out = feed_in_pieces(acc, stream_of(answer), 13)
        events = [json.loads(line[5:]) for line in out.split(b"\n") if line.startswith(b"data: {")]
        named = [e[key]["model"] for e in events if key in e]
        assert named and set(named) == {"alias"}
        assert b"event: " in out and acc.completed


def test_text_of_plain_replies() -> None:
    assert response_text(responses_answer(BASE, REPLY, USAGE, False, {})) == REPLY
    assert message_text(messages_answer(BASE, REPLY, USAGE, False, {})) == REPLY
    assert response_text({"output": [{"type": "reasoning", "content": []}]}) == ""
    assert message_text({"content": [{"type": "tool_use", "input": {}}]}) == ""
    assert response_text({"output": "nonsense"}) == message_text({"content": None}) == ""
    # A background response answers at once, unfinished: no turn to remember yet.
    assert response_text({"status": "queued", "output": []}) is None
    assert response_text({"status": "incomplete", "output": []}) == ""


def test_a_response_without_output_is_no_reply() -> None:
    assert is_response(responses_answer(BASE, REPLY, USAGE, False, {}))
    assert is_response({"status": "queued", "output": []})
    for body in ({"id": "resp_1", "object": "response"}, {"output": None}, {"output": "x"}):
        assert not is_response(body), body


@pytest.mark.parametrize(
    ("reader", "answer"),
    [(ResponsesStream, responses_answer), (MessagesStream, messages_answer)],
)
def test_the_final_event_is_found_where_the_relay_commits_the_turn(
    reader: type[StreamAccumulator], answer: Any
) -> None:
    """The relay puts the turn in the outbox before relaying the bytes from END_EVENT on."""
    events = answer(BASE, REPLY, USAGE, True, {})
    final = next(e for e in events if e.startswith(reader.END_EVENT))
    acc = reader(rename_to=None, drop_usage=False)
    acc.feed(b"".join(events[: events.index(final)]))
    assert not acc.done  # nothing final yet
    acc.feed(final)
    assert acc.done and acc.completed
