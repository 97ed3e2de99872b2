from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from gateway.upstream.sse import (
    MAX_REPLY_CHARS,
    StreamAccumulator,
    TextPrefix,
    error_event,
    is_completion,
    reply_text,
)
from gateway.upstream.sse_apis import MessagesStream, ResponsesStream


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_reassembles_text_across_arbitrary_splits() -> None:
    stream = (chunk("Hel") + chunk("lo ") + chunk("wörld") + chunk(finish="stop")
              + event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
              + b"data: [DONE]\n\n")  # fmt: skip
    for size in (1, 3, 7, len(stream)):
        acc = StreamAccumulator()
        for i in range(0, len(stream), size):
            acc.feed(stream[i : i + size])
        assert acc.text == "Hello wörld"
        assert acc.completed and acc.done and acc.finish_reason == "stop"
        assert acc.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def responses_delta(text: str) -> bytes:
    return b"event: response.output_text.delta\n" + event(
        {"type": "response.output_text.delta", "delta": text}
    )


def messages_delta(text: str) -> bytes:
    delta = {"type": "text_delta", "text": text}
    return b"event: content_block_delta\n" + event({"type": "content_block_delta", "delta": delta})


@pytest.mark.parametrize(
    ("reader", "delta"),
    [
        (StreamAccumulator, chunk),
        (ResponsesStream, responses_delta),
        (MessagesStream, messages_delta),
    ],
)
def test_an_endless_stream_is_relayed_whole_but_only_what_is_stored_is_kept(
    reader: type[StreamAccumulator], delta: Callable[[str], bytes]
) -> None:
    # A stream that never ends (a hostile or runaway upstream) used to grow the
    # gateway by everything relayed; only the first MAX_REPLY_CHARS are ever stored.
    acc = reader()
    words = [f"word{i} " for i in range(3000)]  # 22,890 characters
    for word in words:
        piece = delta(word)
        assert acc.feed(piece) == piece  # every byte still reaches the client
    assert acc.text == "".join(words)[:MAX_REPLY_CHARS]


def test_the_kept_prefix_starts_at_the_first_non_blank_character() -> None:
    # The turn is stored stripped: leading blanks must not use up the prefix.
    text = TextPrefix(limit=5)
    for part in ("  ", "\n", " ab", "cdefgh"):
        text.append(part)
    assert str(text) == "abcde"


def test_a_stream_cut_short_is_not_completed() -> None:
    acc = StreamAccumulator()
    acc.feed(chunk("partial") + b'data: {"choices": [{"delta": {"cont')
    assert acc.text == "partial" and not acc.completed


def test_error_events_mark_the_stream_failed() -> None:
    acc = StreamAccumulator()
    acc.feed(chunk("x") + event({"error": {"message": "boom"}}) + b"data: [DONE]\n\n")
    assert acc.error == {"message": "boom"} and not acc.completed


def test_garbage_is_ignored_not_fatal() -> None:
    acc = StreamAccumulator(max_line_bytes=64)
    acc.feed(b": comment\n\ndata: not json\n\ndata: [1,2]\n\nevent: x\n")
    acc.feed(b"data: " + b"x" * 1000)  # a runaway line is dropped
    acc.feed(b"\n\n" + chunk("ok"))
    assert acc.text == "ok"


def test_other_choices_are_not_mixed_in() -> None:
    acc = StreamAccumulator()
    acc.feed(event({"choices": [{"index": 1, "delta": {"content": "B"}},
                                {"index": 0, "delta": {"content": "A"}}]}))  # fmt: skip
    assert acc.text == "A"


def test_error_event_shape() -> None:
    raw = error_event("gone", "upstream_stream_error")
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    body = json.loads(raw[6:])
    assert body == {"error": {"message": "gone", "type": "upstream_error",
                              "code": "upstream_stream_error", "param": None}}  # fmt: skip


def test_reply_text() -> None:
    assert reply_text({"choices": [{"message": {"content": "hi"}}]}) == "hi"
    assert reply_text({"choices": []}) == ""
    assert reply_text({"choices": [{"message": {"content": None, "tool_calls": []}}]}) == ""


def usage_event() -> bytes:
    return event({"model": "up", "choices": [], "usage": {"prompt_tokens": 1}})


def test_without_rewriting_the_bytes_pass_unchanged() -> None:
    acc = StreamAccumulator()
    data = chunk("hi") + b"data: [DO"
    assert acc.feed(data) == data
    assert acc.flush() == b""


def test_rename_puts_the_clients_model_back_across_chunk_splits() -> None:
    first = {"model": "upstream-name", "choices": [{"index": 0, "delta": {"content": "é"}}]}
    stream = event(first) + b"data: [DONE]\n\n"
    for size in (1, 5, len(stream)):
        acc = StreamAccumulator(rename_to="alias")
        out = b"".join(acc.feed(stream[i : i + size]) for i in range(0, len(stream), size))
        out += acc.flush()
        events = [line[6:] for line in out.split(b"\n") if line.startswith(b"data: ")]
        assert json.loads(events[0])["model"] == "alias"
        assert events[1] == b"[DONE]" and acc.text == "é"


def test_the_usage_event_is_dropped_but_still_read() -> None:
    acc = StreamAccumulator(drop_usage=True)
    out = acc.feed(chunk("a", finish="stop") + usage_event() + b"data: [DONE]\n\n")
    assert b'"usage"' not in out and b"[DONE]" in out and b'"a"' in out
    assert acc.usage == {"prompt_tokens": 1}
    kept = StreamAccumulator(drop_usage=False, rename_to="x").feed(usage_event())
    assert b'"usage"' in kept


def test_a_completion_has_a_first_choice_with_a_message() -> None:
    tool_call = {"role": "assistant", "content": None, "tool_calls": []}
    assert is_completion({"choices": [{"index": 0, "message": tool_call}]})
    for body in ({"id": "x"}, {"choices": []}, {"choices": None}, {"choices": [1]},
                 {"choices": [{"index": 0}]}, {"choices": [{"message": "text"}]}):  # fmt: skip
        assert not is_completion(body), body
