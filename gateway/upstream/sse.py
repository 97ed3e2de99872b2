"""Reading an OpenAI chat stream as it passes through, without re-encoding it.

The gateway relays the upstream's bytes untouched; this accumulator only
looks at them to learn the reply text (to remember it), the usage (for
metrics) and whether the stream finished properly.
"""

from __future__ import annotations

import json
from typing import Any


class StreamAccumulator:
    def __init__(self, max_line_bytes: int = 1 << 20) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes
        self._parts: list[str] = []
        self.done = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.saw_content = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self._max_line_bytes:
            self._buffer = b""  # a runaway line: stop looking at it, keep relaying
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if isinstance(event.get("error"), dict):
            self.error = event["error"]
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self._parts.append(content)
                self.saw_content = True
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    @property
    def completed(self) -> bool:
        """The upstream said it finished: [DONE] or a finish_reason, and no error."""
        return self.error is None and (self.done or self.finish_reason is not None)


def error_event(message: str, code: str, type: str = "upstream_error") -> bytes:
    """An SSE event carrying an OpenAI-style error object (no [DONE] follows it)."""
    payload = {"error": {"message": message, "type": type, "code": code, "param": None}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def reply_text(completion: Any) -> str:
    """The assistant's text in a non-streamed chat completion, or ''."""
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""
