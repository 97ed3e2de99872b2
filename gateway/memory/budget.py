"""Which recalled memories fit in the model's context window: pure functions.

Recalled memories must never push a request over the model's context window
when the client's own request fits. The gateway has no tokenizer (it imports
no inference library), so sizes are estimated, on the safe side: one token
per three bytes of UTF-8. English runs about four characters a token with the
BPE tokenizers of Llama, Qwen, Mistral and SmolLM, so the estimate overshoots
there; text that tokenizes worse (some scripts, long digit runs) can undershoot,
which is why the chat endpoint learns from the upstream's overflow errors and
sends again with fewer memories, or none (see ``gateway.api.memory_fit``).

The room for memories is the window, less the estimated prompt, less the
answer's room: the request's ``max_completion_tokens`` / ``max_tokens``, or a
quarter of the window when it names none (servers then let the answer fill
whatever is left, and memories should not take all of it). Memories go in in
rank order; one that does not fit is skipped and the next, shorter one tried.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.memory.prompt import TEXT_PARTS, content_text, format_memories
from gateway.memory.records import MemoryRecord

BYTES_PER_TOKEN = 3
# Role markers and separators per message (ChatML spends about five), and the
# template's own frame (a default system prompt, the generation prompt).
MESSAGE_OVERHEAD_TOKENS = 8
TEMPLATE_OVERHEAD_TOKENS = 32
# An image or audio part: vision encoders spend hundreds of tokens on one.
NON_TEXT_PART_TOKENS = 512
ANSWER_SHARE_WITHOUT_MAX_TOKENS = 4  # a quarter of the window


def estimate_text(text: str) -> int:
    # surrogatepass: a lone surrogate the client sent in its history (forwarded as
    # sent, gateway.api.chat) counts its three bytes instead of raising.
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def estimate_content(content: Any) -> int:
    """A message's content: its text, and what its other parts render as."""
    tokens = estimate_text(content_text(content))
    if isinstance(content, list):
        # Text parts (chat's `text`, the Responses API's `input_text` and
        # `output_text`) are counted by their text above.
        for part in content:
            if isinstance(part, dict) and part.get("type") not in TEXT_PARTS:
                tokens += _part_tokens(part)
    return tokens


def _part_tokens(part: dict[str, Any]) -> int:
    # Anthropic's tool blocks are text the template renders (a tool's result can
    # be many kilobytes): what they hold, not an image's flat charge.
    if part.get("type") == "tool_result":
        return estimate_content(part.get("content"))
    if part.get("type") == "tool_use":
        used = {"name": part.get("name"), "input": part.get("input")}
        return estimate_text(json.dumps(used, ensure_ascii=False, default=str))
    return NON_TEXT_PART_TOKENS


def estimate_message(message: dict[str, Any]) -> int:
    content = message.get("content")
    tokens = MESSAGE_OVERHEAD_TOKENS + estimate_content(content)
    # Tool calls, names, tool ids: whatever else the template renders.
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    if rest:
        tokens += estimate_text(json.dumps(rest, ensure_ascii=False, default=str))
    return tokens


def estimate_prompt(body: dict[str, Any]) -> int:
    """The request's prompt: its messages, and its tool definitions (templates render them)."""
    messages = body.get("messages")
    tokens = TEMPLATE_OVERHEAD_TOKENS
    if isinstance(messages, list):
        tokens += sum(estimate_message(m) for m in messages if isinstance(m, dict))
    for key in ("tools", "functions", "response_format"):
        if body.get(key) is not None:
            tokens += estimate_text(json.dumps(body[key], ensure_ascii=False, default=str))
    return tokens


def answer_room(body: dict[str, Any], window: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return window // ANSWER_SHARE_WITHOUT_MAX_TOKENS


def fitting_memories(
    records: Sequence[MemoryRecord], body: dict[str, Any], window: int, ratio: float = 1.0
) -> list[MemoryRecord]:
    """The records, in rank order, whose memory block fits beside ``body`` in ``window``.

    ``ratio`` scales every estimate: how far they fell short for this model before
    (learned from its overflow errors; 1 until one happens)."""
    room = window - ratio * estimate_prompt(body) - answer_room(body, window)
    # The block's frame (preamble, tags, the blank line joining it to a system
    # message) is paid once; each memory adds its own line.
    frame = estimate_text(format_memories([])) + 1
    if not records or room <= ratio * frame:
        return []
    room -= ratio * frame
    chosen: list[MemoryRecord] = []
    for record in records:
        line = estimate_text(format_memories([record])) - frame + 2  # rounding, the newline
        if ratio * line <= room:
            chosen.append(record)
            room -= ratio * line
    return chosen
