"""What differs between the APIs whose replies the gateway relays.

Chat Completions, the Responses API and Anthropic's Messages API all go
through one relay (``gateway.api.relay``): the same timeouts, metrics,
breaker bookkeeping and memory writes. A ``Wire`` holds the few things that
differ: how a stream is read as it passes (and how an error is written into
one that broke off: the stream's reader writes it, since a Responses error
event continues the stream's sequence numbers), and where the reply's text
is in a plain answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.upstream.sse import StreamAccumulator, is_completion, reply_text


class Accumulate(Protocol):
    def __call__(self, *, rename_to: str | None, drop_usage: bool) -> StreamAccumulator: ...


@dataclass(frozen=True)
class Wire:
    """One API's shape. ``route`` labels the overhead metric (a bounded set);
    ``json_only``: a 200 answer that is not a JSON object is the upstream
    failing (chat), or just another body to relay as it is (pass-through);
    ``is_reply``: whether a 200's JSON object is this API's answer at all (one
    that is not is the upstream failing: a 502, and no turn)."""

    route: str
    accumulator: Accumulate
    reply_text: Callable[[dict[str, Any]], str | None]  # None: not a finished turn
    json_only: bool = True
    is_reply: Callable[[dict[str, Any]], bool] = lambda _: True


CHAT_WIRE = Wire("/v1/chat/completions", StreamAccumulator, reply_text, is_reply=is_completion)
