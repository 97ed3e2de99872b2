"""Micro-batching with priorities: concurrent requests share encode calls.

Requests wait in a priority queue: a lower number goes first, as with vLLM's
``priority`` request field, and equal priorities go in arrival order. One
worker task takes texts from the front of the queue until the batch holds
``max_batch_size`` texts (waiting up to ``max_wait_s`` for more when the
queue runs dry) and runs one encode call on the inference thread. While a
batch is encoding the next one fills up, so under load batches grow by
themselves, and at low load a request waits at most ``max_wait_s``.

A batch holds requests of one priority only, and a request with more texts
than the room left in a batch is split: its first texts go now, the rest stay
at the front of the queue. So a bulk request, such as the gateway replaying
queued memory writes at priority 1, holds the model for one batch at a time;
a query that arrives meanwhile at priority 0 waits for that batch at most and
then runs alone with the other queries, not padded out with bulk texts.

Lower priorities run only while no higher one waits. If queries alone kept
the model busy all the time, bulk work would wait until they ease off; the
gateway's replay is durable (its outbox), so that delays memory writes but
loses none.

A batch whose encode call fails for a reason that may lie in one of its texts
(a ``TypeError`` or ``ValueError``, what tokenizers raise on a text they cannot
take) is encoded again one request at a time, so only the request that holds the text
fails and the others get their vectors. Any other failure (the model crashed,
ran out of memory) fails the whole batch at once: encoding its requests again
one by one would only repeat it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from embedder.model import Encoded, Encoder

# What an encode call raises when one of its texts is what it cannot take.
INPUT_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError)


class QueueFull(Exception):
    """The service already holds as many texts as it accepts."""


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[Encoded]
    priority: int
    enqueued_at: float = field(default_factory=time.perf_counter)
    taken: int = 0  # texts already handed to an encode call
    parts: list[Encoded] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.taken


@dataclass(frozen=True)
class _Piece:
    job: _Job
    start: int
    end: int


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_waits: list[float]
    inference_s: float


class MicroBatcher:
    def __init__(
        self,
        encoder: Encoder,
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queued_texts: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self._encoder = encoder
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._max_queued_texts = max_queued_texts
        self._on_batch = on_batch
        self._heap: list[tuple[int, int, _Job]] = []
        self._arrivals = itertools.count()
        self._waiting = asyncio.Event()
        self._queued_texts = 0
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued_texts(self) -> int:
        """Texts waiting for an encode call."""
        return self._queued_texts

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="embedder-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for _, _, job in self._heap:
            job.future.cancel()
        self._heap.clear()

    async def encode(self, texts: list[str], priority: int = 0) -> Encoded:
        """Encode ``texts``; a lower ``priority`` is served first."""
        if self._queued_texts + len(texts) > self._max_queued_texts:
            raise QueueFull
        job = _Job(texts, asyncio.get_running_loop().create_future(), priority)
        self._queued_texts += len(texts)
        heapq.heappush(self._heap, (priority, next(self._arrivals), job))
        self._waiting.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The caller left: its texts not yet encoded stop counting at once
            # (the worker drops the job when it reaches it).
            self._queued_texts -= job.remaining
            job.taken = len(job.texts)
            raise

    def _take(self, room: int, priority: int | None) -> _Piece | None:
        """Up to ``room`` texts of the job at the front, if it has ``priority``
        (None: any); drops abandoned jobs."""
        while self._heap:
            front, _, job = self._heap[0]
            if priority is not None and front != priority:
                return None
            if job.future.done():  # the caller left (or an earlier piece failed)
                heapq.heappop(self._heap)
                self._queued_texts -= job.remaining
                continue
            n = min(job.remaining, room)
            piece = _Piece(job, job.taken, job.taken + n)
            job.taken += n
            self._queued_texts -= n
            if job.remaining == 0:
                heapq.heappop(self._heap)
            return piece
        return None

    async def _collect(self) -> list[_Piece]:
        while not self._heap:
            self._waiting.clear()
            await self._waiting.wait()
        pieces: list[_Piece] = []
        size = 0
        priority: int | None = None
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_batch_size:
            piece = self._take(self._max_batch_size - size, priority)
            if piece is not None:
                priority = piece.job.priority
                pieces.append(piece)
                size += piece.end - piece.start
                continue
            if self._heap:  # what waits has another priority: it goes next
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._waiting.clear()
            try:
                # Not wait_for: on Python 3.11 it swallows a cancellation that
                # comes as the event is set (the task would outlive stop()).
                async with asyncio.timeout(remaining):
                    await self._waiting.wait()
            except TimeoutError:
                break
        return pieces

    async def _run(self) -> None:
        while True:
            pieces = [p for p in await self._collect() if not p.job.future.done()]
            if not pieces:
                continue
            try:
                await self._encode(pieces)
            except INPUT_ERRORS as exc:
                if len(pieces) == 1:
                    _fail(pieces, exc)
                    continue
                # One text may be to blame: each request again on its own.
                for piece in pieces:
                    if piece.job.future.done():  # its caller left meanwhile
                        continue
                    try:
                        await self._encode([piece])
                    except Exception as alone:
                        _fail([piece], alone)
            except Exception as exc:
                _fail(pieces, exc)

    async def _encode(self, pieces: list[_Piece]) -> None:
        """One encode call for ``pieces``; each job gets its rows, and a job
        whose last piece this was gets its result. Raises what the call raised."""
        texts = [text for p in pieces for text in p.job.texts[p.start : p.end]]
        started = time.perf_counter()
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._encoder.encode, texts
        )
        finished = time.perf_counter()
        if self._on_batch is not None:
            waits = [started - p.job.enqueued_at for p in pieces if p.start == 0]
            self._on_batch(BatchStats(len(texts), waits, finished - started))
        offset = 0
        for piece in pieces:
            n = piece.end - piece.start
            piece.job.parts.append(
                Encoded(
                    encoded.vectors[offset : offset + n],
                    encoded.token_counts[offset : offset + n],
                )
            )
            offset += n
            if piece.end == len(piece.job.texts) and not piece.job.future.done():
                piece.job.future.set_result(_joined(piece.job.parts))


def _fail(pieces: list[_Piece], exc: Exception) -> None:
    for piece in pieces:
        if not piece.job.future.done():
            piece.job.future.set_exception(exc)


def _joined(parts: list[Encoded]) -> Encoded:
    if len(parts) == 1:
        return parts[0]
    counts = [count for part in parts for count in part.token_counts]
    return Encoded(np.concatenate([part.vectors for part in parts]), counts)
