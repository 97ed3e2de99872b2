"""Micro-batching: concurrent requests are encoded together in one call.

Each request's texts wait in a queue; one worker task takes the first waiting
request, then keeps collecting until the batch holds ``max_batch_size`` texts or
``max_wait_s`` has passed, and runs one encode call on the inference thread.
While a batch is encoding, the next one fills up, so under load batches grow
by themselves and at low load a request waits at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from embedder.model import Encoded, Encoder


class QueueFull(Exception):
    """The service already holds as many texts as it accepts."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[Encoded]
    enqueued_at: float = field(default_factory=time.perf_counter)


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
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._queued_texts = 0
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="embedder-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.cancel()

    async def encode(self, texts: list[str]) -> Encoded:
        if self._queued_texts + len(texts) > self._max_queued_texts:
            raise QueueFull
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._queued_texts += len(texts)
        self._queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].texts)
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_batch_size:
            if self._queue.empty():
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            jobs.append(job)
            size += len(job.texts)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            live = [job for job in jobs if not job.future.done()]  # skip abandoned requests
            self._queued_texts -= sum(len(job.texts) for job in jobs)
            if not live:
                continue
            texts = [text for job in live for text in job.texts]
            started = time.perf_counter()
            try:
                encoded = await loop.run_in_executor(self._executor, self._encoder.encode, texts)
            except Exception as exc:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finished = time.perf_counter()
            if self._on_batch is not None:
                waits = [started - job.enqueued_at for job in live]
                self._on_batch(BatchStats(len(texts), waits, finished - started))
            offset = 0
            for job in live:
                n = len(job.texts)
                part = Encoded(
                    encoded.vectors[offset : offset + n], encoded.token_counts[offset : offset + n]
                )
                offset += n
                if not job.future.done():
                    job.future.set_result(part)
