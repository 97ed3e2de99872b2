"""Reading the Responses API's and Anthropic Messages API's streams as they pass.

Both stream typed events (``event: <type>`` then ``data: {"type": ...}``);
the gateway relays them byte for byte and reads them, like chat's stream
(``StreamAccumulator``, whose line handling these share), only to learn the
reply's text, its usage and whether it finished.

- Responses (OpenAI, as vLLM serves it): ``response.created`` …
  ``response.output_text.delta`` … ``response.completed``. Finished means
  ``response.completed`` or ``response.incomplete`` (the output limit was
  reached: a reply all the same, as chat's ``finish_reason: length``);
  ``response.failed`` and ``error`` are failures.
- Messages (Anthropic, as vLLM serves it): ``message_start`` …
  ``content_block_delta`` … ``message_delta``, ``message_stop`` (vLLM then
  adds ``data: [DONE]``). Finished means ``message_stop``; ``error`` is a failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.upstream.sse import StreamAccumulator

Json = dict[str, Any]
FINISHED_RESPONSE = frozenset({"response.completed", "response.incomplete"})


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _texts(items: Any, kind: str) -> list[str]:
    """The ``text`` of every ``{"type": kind}`` object in the list ``items``."""
    if not isinstance(items, list):
        return []
    found = [i.get("text") for i in items if isinstance(i, dict) and i.get("type") == kind]
    return [t for t in found if isinstance(t, str)]


def response_text(response: Json) -> str | None:
    """The output text of a (non-streamed) Responses API response; None while
    it is not finished (a ``background`` response answers ``queued`` at once)."""
    if response.get("status", "completed") not in ("completed", "incomplete"):
        return None
    output = response.get("output")
    messages = output if isinstance(output, list) else []
    return "".join(
        "".join(_texts(_dict(item).get("content"), "output_text"))
        for item in messages
        if _dict(item).get("type") == "message"
    )


def is_response(body: Json) -> bool:
    """A Responses API response has its ``output`` list (empty while queued);
    a 200 without one is no reply."""
    return isinstance(body.get("output"), list)


def message_text(message: Json) -> str:
    """The text of a (non-streamed) Anthropic message, or ''."""
    return "".join(_texts(message.get("content"), "text"))


def _rename_in(event: Json, key: str, model: str) -> bool:
    """Name ``model`` in the object at ``event[key]`` (where these APIs put it)."""
    inner = event.get(key)
    if not isinstance(inner, dict) or "model" not in inner:
        return False
    inner["model"] = model
    return True


def _event(kind: str, payload: Json) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"


def response_error_event(message: str, code: str, sequence_number: int = 0) -> bytes:
    """A Responses API ``error`` event (the stream's own way to say it failed).
    ``sequence_number`` is the event's place in its stream: every event of a
    Responses stream has one, each one more than the last."""
    payload = {"type": "error", "code": code, "message": message, "param": None}
    return _event("error", {**payload, "sequence_number": sequence_number})


def message_error_event(message: str, code: str) -> bytes:
    """An Anthropic ``error`` event; Anthropic errors have a type, not a code."""
    return _event("error", {"type": "error", "error": {"type": "api_error", "message": message}})


class ResponsesStream(StreamAccumulator):
    """A Responses API stream. ``on_id`` learns the response's id as soon as
    ``response.created`` names it (so ``GET /v1/responses/{id}`` can find the
    upstream that holds it while the stream still runs)."""

    END_EVENT = b"event: response.completed"  # or .incomplete: then the whole chunk waits

    def __init__(
        self,
        *,
        rename_to: str | None = None,
        drop_usage: bool = False,
        on_id: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(rename_to=rename_to)  # Responses has no usage-only event
        self._on_id = on_id
        self.finished = False
        self.last_sequence: int | None = None  # of the last event seen

    def observe(self, event: Json) -> bool:
        kind = event.get("type")
        number = event.get("sequence_number")
        if isinstance(number, int) and not isinstance(number, bool):
            self.last_sequence = number
        response = _dict(event.get("response"))
        if kind == "response.created" and isinstance(response.get("id"), str):
            if self._on_id is not None:
                self._on_id(response["id"])
        elif kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self._parts.append(event["delta"])
        elif kind in FINISHED_RESPONSE:
            self.finished = self.done = True  # done: the relay remembers before relaying it
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
        elif kind == "response.failed":
            self.error = _dict(response.get("error")) or {"message": "response failed"}
        elif kind == "error":
            self.error = event
        return True

    def error_event(self, message: str, code: str) -> bytes:
        # The gateway's error event continues the stream's numbering: a client
        # that orders or deduplicates events by sequence_number would take a
        # 0 here for an event from before response.created.
        following = 0 if self.last_sequence is None else self.last_sequence + 1
        return response_error_event(message, code, following)

    def rename(self, event: Json, model: str) -> bool:
        return _rename_in(event, "response", model)

    @property
    def completed(self) -> bool:
        return self.error is None and self.finished


class MessagesStream(StreamAccumulator):
    """An Anthropic Messages stream."""

    END_EVENT = b"event: message_stop"

    def __init__(self, *, rename_to: str | None = None, drop_usage: bool = False) -> None:
        super().__init__(rename_to=rename_to)  # usage rides on events the client needs
        self.stopped = False

    def observe(self, event: Json) -> bool:
        kind = event.get("type")
        if kind == "message_start":
            self._add_usage(_dict(event.get("message")).get("usage"))
        elif kind == "content_block_delta":
            delta = _dict(event.get("delta"))
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self._parts.append(delta["text"])
        elif kind == "message_delta":
            self._add_usage(event.get("usage"))
        elif kind == "message_stop":
            self.stopped = self.done = True  # done: the relay remembers before relaying it
        elif kind == "error":
            self.error = _dict(event.get("error")) or {"message": "error event"}
        return True

    def error_event(self, message: str, code: str) -> bytes:
        return message_error_event(message, code)

    def _add_usage(self, usage: Any) -> None:
        # Input tokens come with message_start, the output count with message_delta.
        if isinstance(usage, dict):
            self.usage = {**(self.usage or {}), **usage}

    def rename(self, event: Json, model: str) -> bool:
        return _rename_in(event, "message", model)

    @property
    def completed(self) -> bool:
        return self.error is None and self.stopped
