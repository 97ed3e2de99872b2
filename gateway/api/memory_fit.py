"""Recalled memories in a chat request, kept inside the model's context window.

``MemoryFit`` chooses the recalled memories that fit (gateway.memory.budget);
its ``outgoing()`` is the request with them in (gateway.api.outgoing). It
reads the upstream's answer: when the server still reports a context
overflow, the estimate was wrong for this text (a script or a jumble the
tokenizer splits finely) or the window was unknown. The error names the
window and, from vLLM and llama.cpp, the prompt's real token count; both are
remembered for the upstream and model (the window, and how far the estimate
fell short), the memories are fitted again with them, and the request goes
once more. Should that still overflow, it goes without memories (three
sends at most): memories never cost the client its answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Any

from prometheus_client import Histogram

from gateway.api.outgoing import Incoming, Outgoing
from gateway.enums import UpstreamOutcome
from gateway.memory.budget import estimate_prompt, estimate_text, fitting_memories
from gateway.memory.prompt import format_memories
from gateway.memory.records import MemoryRecord
from gateway.upstream.context import (
    MAX_TOKEN_RATIO,
    Overflow,
    context_overflow,
    learn_ratio,
    ratio_for,
    window_for,
)
from gateway.upstream.http import TransportError
from gateway.upstream.pool import OpenedReply, Target, UpstreamPool

logger = logging.getLogger("gateway.chat")


class MemoryFit:
    """The memories of ``incoming``. ``conversation`` is the request seen as a chat
    request, without memories (what the budget measures)."""

    def __init__(
        self,
        targets: Sequence[Target],
        incoming: Incoming,
        configured: dict[str, int],
        conversation: dict[str, Any],
        owner: Hashable = None,
    ) -> None:
        self.targets = targets
        self.incoming = incoming
        self.client_model = incoming.model
        self.configured = configured
        self.conversation = conversation
        self.owner = owner  # whose memories (a Scope): what a learned ratio is kept for
        self.recalled: list[MemoryRecord] = []
        self.injected: list[MemoryRecord] = []
        self.refits = 0
        # Set when a search ran for this turn: ``count_hits`` observes what went in.
        self.hits_metric: Histogram | None = None

    def inject(self, recalled: Sequence[MemoryRecord]) -> int:
        """Put what fits of ``recalled`` into the request; returns how many went in."""
        self.recalled = list(recalled)
        return self._put(self._fitting(self.recalled))

    def _fitting(self, records: list[MemoryRecord]) -> list[MemoryRecord]:
        window = window_for(self.targets, self.client_model, self.configured)
        if not records or window is None:
            return records
        ratio = ratio_for(self.targets, self.client_model, self.owner)
        return fitting_memories(records, self.conversation, window, ratio)

    def _put(self, records: list[MemoryRecord]) -> int:
        self.injected = records
        return len(records)

    def count_hits(self) -> None:
        """Observe how many memories went into the request as finally sent (the
        recall's histogram: not those found, some of which the request held
        already or did not fit)."""
        if self.hits_metric is not None:
            self.hits_metric.observe(len(self.injected))
            self.hits_metric = None

    def outgoing(self) -> Outgoing:
        """What goes upstream now: the request with the memories chosen so far."""
        block = format_memories(self.injected) if self.injected else None
        return self.incoming.outgoing(block, resend=self.refits > 0)

    async def refit_after(self, opened: OpenedReply, pool: UpstreamPool) -> int | None:
        """None when ``opened`` is not a context overflow caused with memories in;
        else learn from it, fit again (fewer, or none), and return how many went in."""
        if not self.injected:
            return None
        try:
            overflow = await _overflow_of(opened)
        except asyncio.CancelledError:  # the client left while the answer was awaited
            opened.response.abort()  # ends the generation upstream, as the relay's close does
            pool.record_outcome(opened.upstream, UpstreamOutcome.CLIENT_DISCONNECT)
            raise
        if overflow is None:
            return None
        await opened.response.aclose()
        # The upstream refused the request as sent (its verdict, as for a relayed 400),
        # which the memories made too long: no failure of the LLM on an error-rate panel.
        pool.record_outcome(opened.upstream, UpstreamOutcome.REJECTED)
        self._learn(opened, overflow)
        self.refits += 1
        fewer = self._fitting(self.recalled)
        if len(fewer) >= len(self.injected) or self.refits > 1:
            fewer = []  # learned nothing that helps, or wrong twice: none then
        logger.info(
            "memories overflowed the context of %s; sent again with %d of %d",
            opened.upstream.name,
            len(fewer),
            len(self.injected),
        )
        return self._put(fewer)

    def _learn(self, opened: OpenedReply, overflow: Overflow) -> None:
        upstream = opened.upstream
        name = opened.target.model or self.client_model
        if overflow.window is not None:
            upstream.learned_windows[name] = overflow.window
        if overflow.prompt_tokens is not None:
            # What was sent: the conversation and the memory block (as the budget counts it).
            sent = estimate_prompt(self.conversation) + estimate_text(
                format_memories(self.injected)
            )
            ratio = min(MAX_TOKEN_RATIO, overflow.prompt_tokens / max(1, sent))
            learn_ratio(upstream, name, self.owner, ratio)


async def _overflow_of(opened: OpenedReply) -> Overflow | None:
    """The upstream's context-overflow error, if that is what it answered. The
    answer is read here; a relay reads it again from aiohttp's buffer."""
    response = opened.response
    if response.status_code == 200 and (response.headers.get("content-type") or "").startswith(
        "text/event-stream"
    ):
        # llama.cpp's server opens a stream, then finds the prompt too long and ends
        # it without a byte (its error goes to its log only): an overflow that names
        # no numbers, found before anything is relayed.
        try:
            return Overflow() if not await response.peek() else None
        except TransportError:
            return None  # the relay reports the broken stream
    if response.status_code not in (400, 413, 422):
        return None
    try:
        content = await response.aread()
    except TransportError:
        return None  # the relay reports the broken answer
    return context_overflow(response.status_code, content)
