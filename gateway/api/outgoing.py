"""What the gateway sends upstream: one pure step from the client's request.

A conversational request (chat, Responses, Messages) is read once into an
:class:`Incoming`; ``Incoming.outgoing(block)`` gives the :class:`Outgoing`
value for it with that memory block (or none): the bytes for each target, and
whether the client asked for usage itself. Nothing is changed in place, so
a resend with fewer memories (gateway.api.memory_fit) is one more call.

The body goes upstream as the client sent it, every field included, except:

- the gateway's own ``memory`` object is removed;
- recalled memories go in where the API keeps its system prompt (``inject``);
- a chat stream asks for usage (``stream_options.include_usage``), which the
  token metrics need; when nothing else changed, that member is spliced into
  the client's bytes, so a long conversation is not re-encoded;
- a target that knows the model by another name (an alias) gets that name.

When none applies, the client's own bytes go (the same object: no copy, no
re-encoding on the hot path). A pass-through request (gateway.api.passthrough)
builds its ``Outgoing`` directly: only the model name can change there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import APIError
from gateway.upstream.pool import Target

Json = dict[str, Any]
# Puts a memory block into a body; returns a new body, the given one unchanged.
Inject = Callable[[Json, str], Json]

JSON_WHITESPACE = b" \t\n\r"
USAGE_MEMBER = b'"stream_options":{"include_usage":true},'


def ask_for_usage(raw: bytes) -> bytes | None:
    """``raw``, a JSON object without a ``stream_options`` member (not even
    ``null``), with that member added
    in front of its first: the client's bytes stay as they were, and a long
    conversation is not re-encoded. None when ``raw`` is not UTF-8 text that
    starts with ``{`` (json also reads UTF-16 and UTF-32, and a BOM); then the
    caller re-encodes. The object has members (``model``, ``messages``), so
    the comma is right.
    """
    if b"\x00" in raw[:4]:  # UTF-16 or UTF-32: every ASCII character has a zero byte
        return None
    start = len(raw) - len(raw.lstrip(JSON_WHITESPACE))
    if raw[start : start + 1] != b"{":
        return None
    return raw[: start + 1] + USAGE_MEMBER + raw[start + 1 :]


@dataclass(frozen=True)
class Outgoing:
    """The bytes a request sends upstream.

    ``content`` goes to a target that knows the model by the client's name
    ``model`` (or when there is no model to rename). Another target gets its own
    name in the model field: spliced in at ``model_at`` (a multipart form), or
    ``body`` re-encoded with it (JSON). ``usage_asked``: whether the client asked
    for usage itself (if not, the gateway asked, and drops the extra event).
    """

    content: bytes
    model: str | None = None
    body: Json | None = None  # read only: the JSON that ``content`` encodes
    model_at: tuple[int, int] | None = None
    usage_asked: bool = True

    def bytes_for(self, target: Target) -> bytes:
        name = target.model
        if name is None or self.model is None or name == self.model:
            return self.content
        if self.model_at is not None:
            start, end = self.model_at
            return self.content[:start] + name.encode() + self.content[end:]
        if self.body is not None:
            return encoded({**self.body, "model": name})
        return self.content


@dataclass(frozen=True)
class Incoming:
    """A conversational request as the client sent it: its bytes, its parsed
    body (read only), the model it names, how memories go into it, and whether
    it is a chat stream (which asks for usage)."""

    raw: bytes
    body: Json
    model: str
    inject: Inject
    chat_stream: bool = False

    @property
    def fields(self) -> Json:
        """The body without the gateway's ``memory`` object: what goes upstream."""
        fields = dict(self.body)
        fields.pop("memory", None)
        return fields

    def outgoing(self, block: str | None = None, *, resend: bool = False) -> Outgoing:
        """The request with memory ``block`` in (None: no memories).

        ``resend``: memories were in an earlier send of this request; the body
        is re-encoded as it was then, even when none go in now.
        """
        fields = dict(self.body)
        # ``"memory": null`` too: the client's own bytes would carry it upstream.
        changed = "memory" in fields or resend
        fields.pop("memory", None)
        if block:
            fields, changed = self.inject(fields, block), True
        raw, usage_asked = self.raw, True
        if self.chat_stream:
            # A client that did not ask for usage does not get the extra event
            # (gateway.upstream.sse.StreamAccumulator drops it).
            options = fields.get("stream_options")
            usage_asked = isinstance(options, dict) and options.get("include_usage") is True
            if not usage_asked and (options is None or isinstance(options, dict)):
                # A splice only where the client sent no member at all: after ours, a
                # client's own ``"stream_options": null`` would win (JSON's last value).
                given = "stream_options" in fields
                fields["stream_options"] = {**(options or {}), "include_usage": True}
                spliced = None if changed or given else ask_for_usage(raw)
                if spliced is None:
                    changed = True
                else:
                    raw = spliced
        content = encoded(fields) if changed else raw
        return Outgoing(content, self.model, fields, usage_asked=usage_asked)


def encoded(body: Json) -> bytes:
    """``body`` as JSON bytes; a 400 when it is nested too deeply to encode. The
    parser takes a little more depth than the encoder has stack left for deep in
    a request's handling (~950 levels: a RecursionError, which would be a 500)."""
    try:
        return json.dumps(body).encode()
    except RecursionError:
        raise APIError(
            400, "request body is nested too deeply to forward", code="invalid_json"
        ) from None
