"""The shutdown grace (gateway.drain): who is cut, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.drain import FINISH_S, Drain, graceful_timeout_s, until_cut
from gateway.exceptions import ShuttingDown


class Cuts:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.event = asyncio.Event()

    def of(self, name: str) -> Callable[[], None]:
        def cut() -> None:
            self.names.append(name)
            self.event.set()

        return cut


async def test_what_is_held_at_the_deadline_is_cut_and_what_was_released_is_not() -> None:
    drain, cuts = Drain(grace_s=0.05), Cuts()
    stream, finished = cuts.of("stream"), cuts.of("finished")
    drain.hold(stream)
    drain.hold(finished)
    drain.begin()
    drain.release(finished)
    assert not drain.over and cuts.names == []  # nothing before the grace ends
    await asyncio.wait_for(cuts.event.wait(), 2)
    assert drain.over and cuts.names == ["stream"]


async def test_nothing_is_cut_before_shutdown_begins() -> None:
    drain, cuts = Drain(grace_s=0), Cuts()
    drain.hold(cuts.of("stream"))
    await asyncio.sleep(0.02)
    assert cuts.names == [] and not drain.over


async def test_a_request_held_after_the_deadline_is_cut_at_once() -> None:
    drain, cuts = Drain(grace_s=0), Cuts()
    drain.hold(cuts.of("first"))
    drain.begin()
    await asyncio.wait_for(cuts.event.wait(), 1)
    assert drain.over
    cuts.event.clear()
    drain.hold(cuts.of("late"))  # a request that began its upstream call after the deadline
    await asyncio.wait_for(cuts.event.wait(), 1)
    assert cuts.names == ["first", "late"]


async def test_a_second_begin_does_not_move_the_deadline() -> None:
    drain, cuts = Drain(grace_s=0.05), Cuts()
    drain.hold(cuts.of("stream"))
    drain.begin()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.sleep(0.03)
    drain.begin()  # a second SIGTERM
    await asyncio.wait_for(cuts.event.wait(), 2)
    assert loop.time() - began < 0.07


def test_uvicorn_waits_past_the_grace_for_the_cut_answers() -> None:
    assert graceful_timeout_s(30) == 30 + FINISH_S
    assert graceful_timeout_s(0.5) >= 0.5 + FINISH_S  # whole seconds, rounded up


async def test_work_still_running_at_the_deadline_is_a_503_to_retry() -> None:
    # The memory API's requests (a write waiting on a slow embedder): uvicorn's own
    # cancel, 5 s later, was a 500 with a traceback.
    drain, started = Drain(grace_s=0.01), asyncio.Event()

    async def slow_write() -> str:
        started.set()
        await asyncio.Event().wait()  # never answered
        return "stored"

    running = asyncio.create_task(until_cut(drain, slow_write()))
    await started.wait()
    drain.begin()
    with pytest.raises(ShuttingDown) as cut:
        await running
    assert cut.value.status_code == 503 and cut.value.headers()["Retry-After"] == "1"


async def test_work_done_in_time_is_its_answer_and_a_client_gone_is_a_cancel() -> None:
    drain = Drain(grace_s=30)
    assert await until_cut(drain, asyncio.sleep(0, "answer")) == "answer"
    waiting = asyncio.create_task(until_cut(drain, asyncio.Event().wait()))
    await asyncio.sleep(0)
    waiting.cancel()  # the request's own task: not the drain's doing
    with pytest.raises(asyncio.CancelledError):
        await waiting
