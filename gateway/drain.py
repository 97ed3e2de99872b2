"""Shutting down without cutting answers short, and saying so when one must be.

On SIGTERM uvicorn stops accepting connections and waits for the requests in
flight. An LLM's answer can take minutes, so the wait is bounded
(``GATEWAY_SHUTDOWN_GRACE_S``). uvicorn's own way out at its bound is to
cancel every request's task: a stream then stops mid-reply with no sign that
it was cut (to an OpenAI client, what arrived reads as the whole reply), a
request waiting for its answer loses its connection, and each logs a
traceback. The drain ends them first, in words a client can act on:

- a stream gets an error event, code ``gateway_shutting_down``, like an
  upstream that died mid-stream; the turn is not remembered;
- a request still waiting for its answer (or for a stream's first event)
  gets 503 ``gateway_shutting_down`` with ``Retry-After`` and
  ``Connection: close`` (gateway.exceptions.ShuttingDown): clients retry, and
  a load balancer sends the retry to another gateway.

uvicorn's own bound is set :data:`FINISH_S` beyond the grace, time for those
answers to go out and for the turns that did finish to reach the outbox;
only what is still running then is cancelled.

Each request in flight holds the drain with a callback, which the drain calls
at the deadline: a set insertion per request, no task or timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Generator
from types import FrameType
from typing import TypeVar

import uvicorn

from gateway.exceptions import ShuttingDown

logger = logging.getLogger("gateway.drain")

# Seconds uvicorn waits past the grace for the cut answers to be sent.
FINISH_S = 5.0

Cut = Callable[[], object]
T = TypeVar("T")


class Drain:
    """The requests in flight, and the deadline shutdown gives them."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._holders: set[Cut] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._over = False

    @property
    def over(self) -> bool:
        """The grace has run out: what is still in flight is being cut."""
        return self._over

    def hold(self, cut: Cut) -> None:
        """Call ``cut`` when the grace runs out (soon, if it has already)."""
        if self._over:
            asyncio.get_running_loop().call_soon(cut)
        else:
            self._holders.add(cut)

    def release(self, cut: Cut) -> None:
        self._holders.discard(cut)

    def begin(self) -> None:
        """Shutdown has begun: cut what is still in flight ``grace_s`` from now."""
        if self._timer is not None or self._over:
            return
        if self._holders:
            logger.info(
                "shutting down: %d answers in flight get up to %gs to finish",
                len(self._holders), self.grace_s,
            )  # fmt: skip
        self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._run_out)

    def _run_out(self) -> None:
        self._over = True
        holders, self._holders = self._holders, set()
        if holders:
            logger.warning(
                "shutdown grace of %gs is over: ending %d answers still in flight",
                self.grace_s, len(holders),
            )  # fmt: skip
        for cut in holders:
            cut()


async def until_cut(drain: Drain, work: Awaitable[T]) -> T:
    """``work``'s result, unless the shutdown grace runs out first: then it is
    cancelled and ``ShuttingDown`` raised, answered 503 with Retry-After (the
    memory API's requests: a write cut so replays from its outbox row)."""
    task = asyncio.ensure_future(work)
    drain.hold(task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if drain.over and current is not None and not current.cancelling():
            grace = f"its shutdown grace of {drain.grace_s:g}s ran out before the answer came"
            raise ShuttingDown(grace) from None
        raise
    finally:
        drain.release(task.cancel)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the drain when shutdown begins; its own
    graceful timeout must be the grace plus :data:`FINISH_S` (``graceful_timeout_s``)."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's (SIGINT, SIGTERM), and SIGHUP as SIGTERM. Left to its default,
        a SIGHUP (``kill -HUP``, sent for a reload by habit; a closed terminal)
        killed the process on the spot: no drain, no log line, the Edge shard
        not flushed."""
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        previous = signal.signal(signal.SIGHUP, self._hang_up)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    def _hang_up(self, sig: int, frame: FrameType | None) -> None:
        logger.warning(
            "SIGHUP: shutting down as on SIGTERM (the gateway reads its settings and "
            "keys only at start: start it again to apply new ones)"
        )
        self.handle_exit(signal.SIGTERM, frame)


def graceful_timeout_s(grace_s: float) -> int:
    """uvicorn's ``timeout_graceful_shutdown`` (whole seconds) for a drain of ``grace_s``."""
    return math.ceil(grace_s + FINISH_S)
