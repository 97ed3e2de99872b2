"""Recalled memories fitted again when the upstream finds the request too long
(gateway.api.memory_fit), with answers shaped as real servers send them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.api.chat import into_messages, recall_fit
from gateway.api.memory_fit import MemoryFit
from gateway.api.outgoing import Incoming
from gateway.api.relay import MemoryPlan
from gateway.enums import UpstreamOutcome
from gateway.memory.records import MemoryRecord
from gateway.upstream.pool import OpenedReply, Target
from gateway.upstream.replica import Upstream
from tests.gateway.memory.harness import ALICE, memories, opened_harness

WHEN = datetime(2024, 5, 8, tzinfo=UTC)
FACTS = ["My dog is a beagle called Pepper.", "I live in Lisbon."]


class EmptyStream:
    """llama.cpp's server's answer to a streamed prompt past its context: 200, the
    stream's headers, then the end, with no byte (the error is in its log only)."""

    status_code = 200
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    closed = False

    def __init__(self, body: bytes = b"") -> None:
        self.body = body

    async def peek(self) -> bytes:
        return self.body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self.body:
            yield self.body

    async def aclose(self) -> None:
        self.closed = True


class Pool:
    def __init__(self) -> None:
        self.outcomes: list[UpstreamOutcome] = []

    def record_outcome(self, upstream: Upstream, outcome: UpstreamOutcome) -> None:
        self.outcomes.append(outcome)


def fit_with_memories() -> tuple[MemoryFit, Target]:
    target = Target(Upstream("primary", "http://u/v1", http=None), None)  # type: ignore[arg-type]
    body: dict[str, Any] = {
        "model": "smollm2",
        "stream": True,
        "messages": [{"role": "user", "content": "What is my dog called?"}],
    }
    incoming = Incoming(json.dumps(body).encode(), body, "smollm2", into_messages, chat_stream=True)
    fit = MemoryFit([target], incoming, {"smollm2": 2048}, incoming.fields)
    records = [MemoryRecord(str(i), text, "alice", WHEN, {}) for i, text in enumerate(FACTS)]
    assert fit.inject(records) == len(FACTS)
    return fit, target


async def test_a_stream_that_ends_empty_with_memories_in_is_sent_again_without_them() -> None:
    fit, target = fit_with_memories()
    reply, pool = EmptyStream(), Pool()
    opened = OpenedReply(target, reply, time.perf_counter())  # type: ignore[arg-type]

    assert await fit.refit_after(opened, pool) == 0  # type: ignore[arg-type]
    assert reply.closed
    assert pool.outcomes == [UpstreamOutcome.REJECTED]  # neutral for the breaker
    sent = json.loads(fit.outgoing().content)
    assert all(FACTS[0] not in str(m.get("content")) for m in sent["messages"])


async def test_a_stream_that_sends_something_is_relayed_with_its_memories() -> None:
    fit, target = fit_with_memories()
    reply, pool = EmptyStream(b'data: {"choices": []}\n\n'), Pool()
    opened = OpenedReply(target, reply, time.perf_counter())  # type: ignore[arg-type]

    assert await fit.refit_after(opened, pool) is None  # type: ignore[arg-type]
    assert not reply.closed and pool.outcomes == []
    assert [chunk async for chunk in reply.aiter_bytes()] == [reply.body]  # still all there


class Overflowed:
    """llama.cpp's server's answer to a prompt past its context, not streamed."""

    status_code = 400
    headers = {"content-type": "application/json"}

    async def aread(self) -> bytes:
        message = (
            "This model's maximum context length is 2048 tokens. However, you requested "
            "2137 tokens (2133 in the messages, 4 in the completion)."
        )
        error = {"message": message, "type": "invalid_request_error"}
        return json.dumps({"error": {**error, "code": "context_length_exceeded"}}).encode()

    async def aclose(self) -> None:
        pass


async def test_an_overflow_the_memories_caused_is_counted_as_a_refusal_not_an_llm_failure() -> None:
    # memgate_upstream_requests_total said http_error: on an error-rate panel, the
    # LLM failing, each time memories overflowed a healthy server's window.
    fit, target = fit_with_memories()
    pool = Pool()
    opened = OpenedReply(target, Overflowed(), time.perf_counter())  # type: ignore[arg-type]

    assert await fit.refit_after(opened, pool) is not None  # type: ignore[arg-type]
    assert pool.outcomes == [UpstreamOutcome.REJECTED]


def histogram(metrics: Any) -> tuple[float, float]:
    """memgate_memory_recall_hits' sum and count."""
    samples = {s.name: s.value for f in metrics.registry.collect() for s in f.samples}
    return samples["memgate_memory_recall_hits_sum"], samples["memgate_memory_recall_hits_count"]


async def test_the_recall_histogram_counts_the_memories_that_went_in(tmp_path: Path) -> None:
    # "Memories injected per recall" on the dashboard observed what the search found:
    # 2 here, where none went in (the answer's room, max_tokens 2048, leaves none).
    async with opened_harness(tmp_path) as h:
        await h.service.add(ALICE, memories("My dog is Pepper.", "I live in Lisbon."))
        settings = SimpleNamespace(memory_min_score=-1.0, memory_required=False)
        router = SimpleNamespace(context_windows={"smollm2": 2048})
        services = SimpleNamespace(
            memory=h.service, metrics=h.metrics, settings=settings, router=router
        )
        question = "What is my dog called?"
        body: dict[str, Any] = {
            "model": "smollm2",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": question}],
        }
        incoming = Incoming(json.dumps(body).encode(), body, "smollm2", into_messages)
        plan = MemoryPlan(scope=ALICE, top_k=5, store=False, query=question)
        target = Target(Upstream("primary", "http://u/v1", http=None), None)  # type: ignore[arg-type]
        headers: dict[str, str] = {}

        fit = await recall_fit(services, plan, headers, [target], incoming, incoming.fields)  # type: ignore[arg-type]
        assert headers["x-memory-hits"] == "0"
        assert histogram(h.metrics) == (0.0, 0.0)  # not yet: a resend may put in fewer
        fit.count_hits()
        assert histogram(h.metrics) == (0.0, 1.0)


class Waiting(EmptyStream):
    """A stream whose first byte has not come (the server busy with another request)."""

    aborted = False

    async def peek(self) -> bytes:
        await asyncio.Event().wait()
        return b""

    def abort(self) -> None:
        self.aborted = True


async def test_a_client_that_leaves_while_the_first_byte_is_awaited_ends_the_upstream_request() -> (
    None
):
    fit, target = fit_with_memories()
    reply, pool = Waiting(), Pool()
    opened = OpenedReply(target, reply, time.perf_counter())  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(fit.refit_after(opened, pool))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    waiting.cancel()  # as the chat endpoint's disconnect watch does
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert reply.aborted
    assert pool.outcomes == [UpstreamOutcome.CLIENT_DISCONNECT]
