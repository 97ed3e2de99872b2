"""The relay's bookkeeping after a streamed turn (gateway.api.relay), driven
with an upstream stream the test releases event by event and a real memory
service (tests.gateway.memory.harness)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api.relay import MemoryPlan, Relay
from gateway.drain import Drain
from gateway.enums import UpstreamOutcome
from gateway.memory.records import Scope
from gateway.upstream.http import Disconnected
from gateway.upstream.pool import OpenedReply, Target
from gateway.upstream.replica import Upstream
from tests.gateway.memory.harness import ALICE, Harness, opened_harness

QUESTION = "what did I tell you about my sister?"


def event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


ABORTED = b"<aborted>"


class StreamedReply:
    """An upstream's stream whose events come when the test puts them; ``abort``
    breaks it off as closing a real connection does."""

    status_code = 200
    headers = {"content-type": "text/event-stream"}

    def __init__(self) -> None:
        self.events: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while (chunk := await self.events.get()) is not None:
            if chunk == ABORTED:
                raise Disconnected("connection closed")
            yield chunk

    def abort(self) -> None:
        self.events.put_nowait(ABORTED)

    async def aclose(self) -> None:
        pass

    def finish(self, text: str) -> None:
        for piece in (
            event({"choices": [{"index": 0, "delta": {"content": text}}]}),
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            event("[DONE]"),
            None,
        ):
            self.events.put_nowait(piece)


class Pool:
    def record_outcome(self, upstream: Upstream, outcome: UpstreamOutcome) -> None:
        self.outcome = outcome


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with opened_harness(tmp_path) as harness:
        yield harness


def relay(
    h: Harness, reply: StreamedReply, started: float, pool: Pool, drain: Drain | None = None
) -> Relay:
    upstream = Upstream("u", "http://u/v1", http=None)  # type: ignore[arg-type]
    opened = OpenedReply(Target(upstream, "m"), reply, time.perf_counter())  # type: ignore[arg-type]
    plan = MemoryPlan(scope=ALICE, top_k=5, store=True, query=QUESTION)
    return Relay(
        opened, plan, started, "m", model_label="m", metrics=h.metrics, pool=pool,  # type: ignore[arg-type]
        memory=h.service, total_timeout_s=60, stream_idle_timeout_s=60,
        drain=drain or Drain(30),
    )  # fmt: skip


async def stream_turn(h: Harness, *, forget_mid_stream: bool) -> bytes:
    """One streamed turn of Alice's: the first token, maybe a forget of Alice,
    then the rest of the stream, read to its end as a client reads it."""
    reply, pool = StreamedReply(), Pool()
    chunks = relay(h, reply, time.perf_counter(), pool).stream()
    reply.events.put_nowait(event({"choices": [{"index": 0, "delta": {"content": "You"}}]}))
    received = [await anext(chunks)]  # mid-stream: the client has the first token
    if forget_mid_stream:
        await h.service.forget(ALICE)
    reply.finish(" said she lives in Lyon.")
    received += [chunk async for chunk in chunks]
    assert pool.outcome == UpstreamOutcome.SUCCESS
    return b"".join(received)


async def memories_of(h: Harness, scope: Scope) -> list[str]:
    await h.service.drain()
    page, _ = await h.service.page(scope, 100, None)
    return sorted(record.text for record in page)


async def test_a_turn_whose_user_is_forgotten_mid_stream_stores_nothing(h: Harness) -> None:
    body = await stream_turn(h, forget_mid_stream=True)
    assert body.endswith(b"data: [DONE]\n\n")  # the client got the whole answer
    assert h.outbox.depth == 0 and await memories_of(h, ALICE) == []
    forgotten = h.metrics.memory_writes.labels("chat", "forgotten")._value.get()
    assert forgotten == 2  # the question and the reply, counted, not stored


async def test_the_same_turn_without_a_forget_is_stored(h: Harness) -> None:
    # The control: the turn above stores nothing because of the forget alone.
    await stream_turn(h, forget_mid_stream=False)
    assert await memories_of(h, ALICE) == sorted([QUESTION, "You said she lives in Lyon."])


async def test_a_turn_begun_after_the_forget_is_stored(h: Harness) -> None:
    await h.service.forget(ALICE)
    await stream_turn(h, forget_mid_stream=False)
    assert await memories_of(h, ALICE) == sorted([QUESTION, "You said she lives in Lyon."])


async def test_a_reply_of_only_invisible_characters_is_not_remembered(h: Harness) -> None:
    # A reply of zero-width spaces and direction marks survives str.strip: stored,
    # it would be recalled as an empty quote. The question is kept.
    reply, pool = StreamedReply(), Pool()
    chunks = relay(h, reply, time.perf_counter(), pool).stream()
    reply.events.put_nowait(event({"choices": [{"index": 0, "delta": {"content": "\u200b"}}]}))
    received = [await anext(chunks)]
    reply.finish("\u200f\u2060 ")
    received += [chunk async for chunk in chunks]
    assert b"".join(received).endswith(b"data: [DONE]\n\n")
    assert await memories_of(h, ALICE) == [QUESTION]


def first_token() -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": "You"}}]})


async def test_a_stream_past_the_shutdown_grace_ends_with_an_error_event(h: Harness) -> None:
    reply, pool, drain = StreamedReply(), Pool(), Drain(grace_s=0.05)
    chunks = relay(h, reply, time.perf_counter(), pool, drain).stream()
    reply.events.put_nowait(first_token())
    received = [await anext(chunks)]
    drain.begin()  # SIGTERM; the upstream sends nothing more
    received += [chunk async for chunk in chunks]  # ends: the drain closed the upstream
    last = json.loads(received[-1].decode().removeprefix("data: "))
    assert last["error"]["code"] == "gateway_shutting_down"
    assert b"[DONE]" not in b"".join(received)
    assert pool.outcome == UpstreamOutcome.SHUTDOWN  # not the upstream's failure
    assert await memories_of(h, ALICE) == []  # a cut reply is not remembered


async def test_a_stream_that_ends_within_the_grace_is_whole_and_stored(h: Harness) -> None:
    reply, pool, drain = StreamedReply(), Pool(), Drain(grace_s=30)
    chunks = relay(h, reply, time.perf_counter(), pool, drain).stream()
    reply.events.put_nowait(first_token())
    received = [await anext(chunks)]
    drain.begin()
    reply.finish(" said she lives in Lyon.")
    received += [chunk async for chunk in chunks]
    assert b"".join(received).endswith(b"data: [DONE]\n\n")
    assert pool.outcome == UpstreamOutcome.SUCCESS
    assert await memories_of(h, ALICE) == sorted([QUESTION, "You said she lives in Lyon."])


async def test_a_stream_the_upstream_ends_with_its_own_error_is_relayed_as_it_came(
    h: Harness,
) -> None:
    # What vLLM sends when a generation fails mid-stream: its error, then [DONE].
    # It is the upstream's answer: relayed, not followed by a second (untrue)
    # "closed before finishing" event, and not a failure for the breaker that one
    # client's requests could open for everyone.
    reply, pool = StreamedReply(), Pool()
    chunks = relay(h, reply, time.perf_counter(), pool).stream()
    error = {"error": {"message": "prompt too long", "type": "BadRequestError", "code": 400}}
    for piece in (first_token(), event(error), event("[DONE]"), None):
        reply.events.put_nowait(piece)
    body = b"".join([chunk async for chunk in chunks])
    assert body.endswith(event(error) + event("[DONE]"))
    assert body.count(b'"error"') == 1
    assert pool.outcome == UpstreamOutcome.HTTP_ERROR  # neutral for the breaker
    assert await memories_of(h, ALICE) == []


async def test_a_stream_the_upstream_ends_at_once_with_nothing_is_no_failure_of_the_llm(
    h: Harness,
) -> None:
    # What llama.cpp's server (make run's LLM) answers a streamed prompt longer than
    # its context: 200, the stream's headers, then a clean end with no event at all.
    # A server that ends a stream this way is up and answering; five such requests
    # (a client whose conversation outgrew the window) opened the breaker that every
    # tenant shares.
    reply, pool = StreamedReply(), Pool()
    chunks = relay(h, reply, time.perf_counter(), pool).stream()
    reply.events.put_nowait(None)
    body = b"".join([chunk async for chunk in chunks])
    error = json.loads(body.decode().removeprefix("data: "))["error"]
    assert error["code"] == "upstream_stream_empty"
    assert "context window" in error["message"]
    assert pool.outcome == UpstreamOutcome.HTTP_ERROR  # neutral for the breaker
    assert await memories_of(h, ALICE) == []
