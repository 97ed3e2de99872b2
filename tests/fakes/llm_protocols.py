"""What the stand-in LLM answers on each API, shaped as vLLM answers it.

Pure functions from a request body and a reply text to the answer: a JSON
object, or the list of SSE events of a stream. The shapes follow vLLM's
servers, which follow OpenAI's and Anthropic's references:

- Chat Completions: ``data: {chat.completion.chunk}`` events, ``data: [DONE]``.
- Completions: ``data: {text_completion}`` events, ``data: [DONE]``.
- Responses: typed events, ``event: <type>`` then ``data: {"type": <type>,
  ..., "sequence_number": n}``, from ``response.created`` to
  ``response.completed``; no ``[DONE]`` (vLLM's responses router sends none).
- Anthropic Messages: ``event: <type>`` then ``data: {"type": <type>, ...}``,
  ``message_start`` to ``message_stop``, then ``data: [DONE]`` as vLLM adds.

Each ``*_turn`` returns the conversation as vLLM's chat template would see
it (instructions or ``system`` first), from which the echo reply is made.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

Json = dict[str, Any]
WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")  # "a b c" -> "a ", "b ", "c"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        kinds = ("text", "input_text")
        parts = [p for p in content if isinstance(p, dict) and p.get("type") in kinds]
        return " ".join(str(p.get("text", "")) for p in parts)
    return ""


def pieces(reply: str) -> list[str]:
    return [piece for piece in WORD_BOUNDARY.split(reply) if piece]


def data(event: Json) -> bytes:
    return b"data: %s\n\n" % dumps(event)


def typed(event: Json) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), dumps(event))


DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """The body is not a request of this API."""


# -- the conversation each API's request amounts to --------------------------


def chat_turn(body: Json) -> list[Json]:
    if not isinstance(body.get("messages"), list):
        raise BadRequest("'messages' must be a list")
    return [m for m in body["messages"] if isinstance(m, dict)]


def responses_turn(body: Json) -> list[Json]:
    given = body.get("input")
    if not isinstance(given, str | list):
        raise BadRequest("'input' must be a string or a list")
    turn = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    if isinstance(given, str):
        return [*turn, {"role": "user", "content": given}]
    return [*turn, *(item for item in given if isinstance(item, dict))]


def messages_turn(body: Json) -> list[Json]:
    if not isinstance(body.get("messages"), list) or not isinstance(body.get("max_tokens"), int):
        raise BadRequest("'messages' (a list) and 'max_tokens' are required")
    system = body.get("system")
    turn = [{"role": "system", "content": system}] if system else []
    return [*turn, *(m for m in body["messages"] if isinstance(m, dict))]


def completions_turn(body: Json) -> list[Json]:
    if not isinstance(body.get("prompt"), str):
        raise BadRequest("'prompt' must be a string")
    return [{"role": "user", "content": body["prompt"]}]


def words(turn: list[Json]) -> int:
    return sum(len(text_of(m.get("content")).split()) for m in turn)


# -- answers ------------------------------------------------------------------


def chat_answer(base: Json, reply: str, usage: Json, stream: bool, body: Json) -> Any:
    if not stream:
        message = {"role": "assistant", "content": reply}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}

    def chunk(delta: Json, finish: str | None = None) -> Json:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}

    events = [chunk({"role": "assistant"})]
    events += [chunk({"content": piece}) for piece in pieces(reply)]
    events.append(chunk({}, "stop"))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**chunk({}), "choices": [], "usage": usage})
    return [*map(data, events), DONE]


def completions_answer(base: Json, reply: str, usage: Json, stream: bool, body: Json) -> Any:
    def choice(text: str, finish: str | None) -> Json:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    head = {**base, "id": base["id"].replace("chatcmpl", "cmpl"), "object": "text_completion"}
    if not stream:
        return {**head, "choices": [choice(reply, "stop")], "usage": usage}
    events = [{**head, "choices": [choice(piece, None)]} for piece in pieces(reply)]
    events.append({**head, "choices": [choice("", "stop")]})
    return [*map(data, events), DONE]


def responses_answer(base: Json, reply: str, usage: Json, stream: bool, body: Json) -> Any:
    item_id = "msg_" + base["id"]
    tokens = {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"]}
    response = {
        "id": "resp_" + base["id"], "object": "response", "created_at": base["created"],
        "model": base["model"], "status": "completed", "instructions": body.get("instructions"),
        "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {**tokens, "total_tokens": usage["total_tokens"]},
        "error": None, "incomplete_details": None, "metadata": body.get("metadata"),
        "previous_response_id": body.get("previous_response_id"),
    }  # fmt: skip
    part = {"type": "output_text", "text": reply, "annotations": []}
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "completed"}
    final = {**response, "output": [{**item, "content": [part]}]}
    if not stream:
        return final
    started = {**response, "status": "in_progress", "usage": None}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[Json] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        *({"type": "response.output_text.delta", **at, "delta": p, "logprobs": []}
          for p in pieces(reply)),
        {"type": "response.output_text.done", **at, "text": reply, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
        {"type": "response.completed", "response": final},
    ]  # fmt: skip
    return [typed({**e, "sequence_number": n}) for n, e in enumerate(events)]


def messages_answer(base: Json, reply: str, usage: Json, stream: bool, body: Json) -> Any:
    message = {
        "id": "msg_" + base["id"], "type": "message", "role": "assistant",
        "model": base["model"], "content": [{"type": "text", "text": reply}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": usage["prompt_tokens"],
                  "output_tokens": usage["completion_tokens"]},
    }  # fmt: skip
    if not stream:
        return message
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 0}
    events: list[Json] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0,
           "delta": {"type": "text_delta", "text": p}} for p in pieces(reply)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": usage["completion_tokens"]}},
        {"type": "message_stop"},
    ]  # fmt: skip
    return [*map(typed, events), DONE]


# -- the endpoints that generate nothing --------------------------------------


def embeddings(body: Json, model: str) -> Json:
    """One 4-dimensional vector per input, from its length; base64 when asked
    (the openai SDK asks by default), as vLLM encodes it: float32, little-endian."""
    given = body.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'input' must be a string or a non-empty list")
    rows = []
    for i, text in enumerate(inputs):
        vector = [float(len(str(text))), 1.0, 0.5, float(i)]
        value: Any = vector
        if body.get("encoding_format") == "base64":
            value = base64.b64encode(struct.pack("<4f", *vector)).decode()
        rows.append({"object": "embedding", "index": i, "embedding": value})
    count = sum(len(str(t).split()) for t in inputs)
    usage = {"prompt_tokens": count, "total_tokens": count}
    return {"object": "list", "data": rows, "model": body.get("model", model), "usage": usage}


def count_tokens(body: Json) -> Json:
    return {"input_tokens": words(messages_turn({**body, "max_tokens": 1}))}


def tokenize(body: Json) -> Json:
    text = body.get("prompt")
    if not isinstance(text, str):
        raise BadRequest("'prompt' must be a string")
    tokens = [len(word) for word in text.split()]
    return {"tokens": tokens, "count": len(tokens), "max_model_len": 4096}


def form_fields(raw: bytes, content_type: str) -> dict[str, bytes]:
    """A multipart/form-data body's fields by name (files' bytes included)."""
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if found is None:
        raise BadRequest("multipart body without a boundary")
    fields = {}
    for part in raw.split(b"--" + found.group(1).encode())[1:]:
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n")
    return fields
