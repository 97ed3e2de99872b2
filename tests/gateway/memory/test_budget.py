from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.memory.budget import (
    answer_room,
    estimate_prompt,
    estimate_text,
    fitting_memories,
)
from gateway.memory.prompt import format_memories, inject_memories
from gateway.memory.records import MemoryRecord

WHEN = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def record(text: str) -> MemoryRecord:
    return MemoryRecord(text[:8], text, "alice", WHEN, {})


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


def test_the_estimate_errs_on_the_safe_side_for_english() -> None:
    # BPE tokenizers spend about one token per four characters of English.
    text = "Alice adopted a beagle named Pepper and lives in Lisbon. " * 20
    assert estimate_text(text) >= len(text) / 4 * 1.25
    assert estimate_text("") == 0
    assert estimate_text("é") == 1  # bytes, not characters


def test_a_lone_surrogate_in_the_history_is_counted_not_raised() -> None:
    # Forwarded as sent (only the latest user message is checked): a client that
    # cut an emoji in half earlier in the conversation still gets its turn.
    body = chat("and now?", tools=[{"type": "function", "function": {"name": "f\ud83d"}}])
    body["messages"][:0] = [
        {"role": "system", "content": "be brief \udc00"},
        {"role": "user", "content": [{"type": "text", "text": "half an emoji: \ud83d"}]},
        {"role": "assistant", "content": "ok", "name": "bot\ud800"},
    ]
    assert estimate_text("\ud800") == 1  # its three bytes, as surrogatepass encodes it
    assert estimate_prompt(body) > estimate_prompt(chat("and now?"))


def test_the_answer_keeps_its_room() -> None:
    assert answer_room(chat("hi", max_tokens=100), 2048) == 100
    assert answer_room(chat("hi", max_completion_tokens=64, max_tokens=9), 2048) == 64
    assert answer_room(chat("hi"), 2048) == 512  # none named: a quarter of the window
    assert answer_room(chat("hi", max_tokens=True), 2048) == 512


def test_everything_fits_in_a_large_window() -> None:
    records = [record(f"fact number {i} about alice") for i in range(5)]
    assert fitting_memories(records, chat("what do you know?"), 32768) == records


def test_only_what_fits_goes_in_and_the_whole_stays_inside_the_window() -> None:
    records = [record(f"{i}: " + "a long detail about the trip " * 10) for i in range(10)]
    body = chat("Where did I go? " * 20, max_tokens=64)
    window = 1024
    chosen = fitting_memories(records, body, window)
    assert 0 < len(chosen) < len(records)
    assert chosen == records[: len(chosen)]  # rank order kept
    injected = {**body, "messages": inject_memories(body["messages"], format_memories(chosen))}
    assert estimate_prompt(injected) + 64 <= window
    # One more would not have fitted.
    more = records[: len(chosen) + 1]
    bigger = {**body, "messages": inject_memories(body["messages"], format_memories(more))}
    assert estimate_prompt(bigger) + 64 > window


def test_a_long_memory_is_skipped_for_shorter_ones_after_it() -> None:
    records = [record("short one"), record("x" * 3000), record("short two")]
    chosen = fitting_memories(records, chat("hi", max_tokens=32), 512)
    assert [r.text for r in chosen] == ["short one", "short two"]


def test_nothing_goes_in_when_the_request_alone_fills_the_window() -> None:
    records = [record("a fact")]
    assert fitting_memories(records, chat("word " * 3000), 2048) == []
    assert fitting_memories([], chat("hi"), 2048) == []


def test_tools_and_images_count() -> None:
    plain = estimate_prompt(chat("hi"))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": "y" * 300}}}]
    assert estimate_prompt(chat("hi", tools=tools)) > plain + 100
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]
    image = {"role": "user", "content": parts}
    assert estimate_prompt({"messages": [image]}) >= plain + 500


def test_a_learned_ratio_makes_room_for_fewer() -> None:
    records = [record(f"{i}: " + "a detail of the trip " * 5) for i in range(8)]
    body = chat("Where did I go?", max_tokens=32)
    plain = fitting_memories(records, body, 700)
    scaled = fitting_memories(records, body, 700, ratio=2.0)
    assert len(plain) == len(records) and 0 < len(scaled) < len(plain)


def test_responses_text_parts_cost_their_text_not_an_images_tokens() -> None:
    # The Responses API sends text as `input_text` (and earlier replies as
    # `output_text`): text, as `text` is on chat, not a vision encoder's 512.
    def parts(kind: str) -> dict[str, Any]:
        content = [{"type": kind, "text": f"part {i} of the question"} for i in range(4)]
        return {"messages": [{"role": "user", "content": content}], "max_tokens": 32}

    chat_parts = estimate_prompt(parts("text"))
    assert estimate_prompt(parts("input_text")) == chat_parts
    assert estimate_prompt(parts("output_text")) == chat_parts
    records = [record(f"fact {i} about alice's trip") for i in range(10)]
    assert fitting_memories(records, parts("input_text"), 1024) == records


def test_anthropic_tool_blocks_cost_what_they_hold() -> None:
    # An agent's tool result can be many kilobytes: charged as one image (512),
    # memories overflowed the window, and the overflow taught a wrong ratio.
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "line of output\n" * 2000}
    nested = {**result, "content": [{"type": "text", "text": "line of output\n" * 2000}]}
    used = {"type": "tool_use", "id": "t1", "name": "grep", "input": {"q": "needle " * 3000}}
    small = estimate_prompt({"messages": [{"role": "user", "content": "hi"}]})
    for block in (result, nested, used):
        body = {"messages": [{"role": "user", "content": [block]}], "max_tokens": 64}
        assert estimate_prompt(body) >= small + 7000
        assert fitting_memories([record("a fact")], body, 4096) == []
