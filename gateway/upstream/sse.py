"""Reading an OpenAI chat stream as it passes through, without re-encoding it.

The gateway relays the upstream's bytes untouched; this accumulator only
looks at them to learn the reply text (to remember it), the usage (for
metrics) and whether the stream finished properly.
"""

from __future__ import annotations

import json
from typing import Any

# Memories from chat are clipped: a pasted document is not a memory. So a stream's
# reader keeps no more of the reply than that, however long the stream runs.
MAX_REPLY_CHARS = 4000


class TextPrefix:
    """The first ``limit`` characters of a text that arrives in parts, from its
    first non-blank one (the turn is stored stripped); the rest is let go, so
    an endless stream costs no memory for its text. ``append`` as a list's:
    the readers of every API add their deltas to ``StreamAccumulator._parts``."""

    __slots__ = ("_limit", "_parts", "_size")

    def __init__(self, limit: int = MAX_REPLY_CHARS) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0

    def append(self, part: str) -> None:
        room = self._limit - self._size
        if room <= 0:
            return
        if not self._size:
            part = part.lstrip()
        part = part[:room]
        if part:
            self._parts.append(part)
            self._size += len(part)

    def __str__(self) -> str:
        return "".join(self._parts)


class StreamAccumulator:
    """Reads an OpenAI chat stream as it passes; optionally rewrites it on the way.

    ``feed`` returns the bytes to relay: the input itself, unless the stream
    must be changed, then whole lines, an event split across chunks held back
    until complete. Two changes exist, both invisible to a client that got what
    it asked for:

    - ``rename_to``: the upstream was sent another model name (an alias, a
      fallback's model); each event gets the client's name back;
    - ``drop_usage``: the gateway asked for usage (for its metrics) when the
      client had not; the usage-only event is not relayed.
    """

    # How the stream's final event starts: the relay commits the turn before relaying it.
    END_EVENT = b"data: [DONE]"

    def __init__(
        self,
        *,
        rename_to: str | None = None,
        drop_usage: bool = False,
        max_line_bytes: int = 1 << 20,
    ) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes
        self._rename_to = rename_to
        self._drop_usage = drop_usage
        self._rewrites = rename_to is not None or drop_usage
        self._skipping = False
        self._parts = TextPrefix()
        self.done = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The reply's text so far, from its first non-blank character, at most
        ``MAX_REPLY_CHARS`` of it (all a turn stores)."""
        return str(self._parts)

    def feed(self, chunk: bytes) -> bytes:
        passthrough = b""
        if self._skipping:
            # Inside a line too long to read: relay it unread, up to its end.
            head, newline, chunk = chunk.partition(b"\n")
            passthrough = head + newline
            if not newline:
                return passthrough
            self._skipping = False
        self._buffer += chunk
        *lines, rest = self._buffer.split(b"\n")
        runaway = b""
        if len(rest) > self._max_line_bytes:
            # A runaway line: stop reading it, whatever the chunking.
            self._skipping = True
            runaway, rest = rest, b""
        self._buffer = rest
        kept = [line for line in map(self._line, lines) if line is not None]
        if not self._rewrites:
            return passthrough + chunk  # the input, unchanged
        body = b"\n".join(kept) + b"\n" if kept else b""
        return passthrough + body + runaway

    def flush(self) -> bytes:
        """What is left at the end of the stream (only when rewriting)."""
        tail, self._buffer = self._buffer, b""
        return tail if self._rewrites else b""

    @property
    def mid_line(self) -> bool:
        """The stream so far ends inside a line (it was cut off)."""
        return bool(self._buffer) or self._skipping

    def _line(self, line: bytes) -> bytes | None:
        if not line.startswith(b"data:"):
            return line
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return line
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            return line
        if not isinstance(event, dict):
            return line
        if not self.observe(event):
            return None
        if self._rename_to is not None and self.rename(event, self._rename_to):
            return b"data: " + json.dumps(event).encode()  # ASCII: survives lone surrogates
        return line

    def observe(self, event: dict[str, Any]) -> bool:
        """Learn from one event; False: do not relay it. Other APIs' streams
        (gateway.upstream.sse_apis) read their own events here."""
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
            if self._drop_usage and not event.get("choices"):
                return False
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self._parts.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return True

    def error_event(self, message: str, code: str) -> bytes:
        """The event that ends this stream when it broke off: each API's own
        (Responses and Messages override it)."""
        return error_event(message, code)

    def rename(self, event: dict[str, Any], model: str) -> bool:
        """Give ``event`` the client's model name; False when it names none."""
        if "model" not in event:
            return False
        event["model"] = model
        return True

    @property
    def completed(self) -> bool:
        """The upstream said it finished: [DONE] or a finish_reason, and no error."""
        return self.error is None and (self.done or self.finish_reason is not None)


def error_event(message: str, code: str, type: str = "upstream_error") -> bytes:
    """An SSE event carrying an OpenAI-style error object (no [DONE] follows it)."""
    payload = {"error": {"message": message, "type": type, "code": code, "param": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def is_completion(body: dict[str, Any]) -> bool:
    """Whether ``body`` is a chat completion: a first choice with a message (whose
    content may be null, as with tool calls). A 200 without one (``{"id": ...}``
    alone, say) has no reply to relay or to remember."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    return isinstance(choices[0].get("message"), dict)


def reply_text(completion: Any) -> str:
    """The assistant's text in a non-streamed chat completion, or ''."""
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""
