from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from embedder.batcher import BatchStats, MicroBatcher, QueueFull
from tests.embedder.fake_encoder import FakeEncoder


async def test_concurrent_requests_share_one_encode_call() -> None:
    encoder = FakeEncoder()
    stats: list[BatchStats] = []
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=64, max_wait_s=0.05,
                               max_queued_texts=1000, on_batch=stats.append)  # fmt: skip
        batcher.start()
        texts = [[f"t{i}"] for i in range(10)] + [["a", "bb", "ccc"]]
        results = await asyncio.gather(*(batcher.encode(t) for t in texts))
        await batcher.stop()
    assert len(encoder.batches) == 1 and len(encoder.batches[0]) == 13
    # Each caller gets its own rows back, in its own order.
    assert [r.vectors.shape[0] for r in results] == [1] * 10 + [3]
    assert results[-1].vectors[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert stats[0].size == 13 and len(stats[0].queue_waits) == 11


async def test_batches_are_bounded_in_size() -> None:
    encoder = FakeEncoder()
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=4, max_wait_s=0.05,
                               max_queued_texts=1000)  # fmt: skip
        batcher.start()
        await asyncio.gather(*(batcher.encode([f"t{i}"]) for i in range(10)))
        await batcher.stop()
    assert max(len(b) for b in encoder.batches) <= 4
    assert sum(len(b) for b in encoder.batches) == 10


async def test_a_lone_request_waits_at_most_the_bound() -> None:
    encoder = FakeEncoder()
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=64, max_wait_s=0.01,
                               max_queued_texts=1000)  # fmt: skip
        batcher.start()
        result = await asyncio.wait_for(batcher.encode(["alone"]), timeout=1.0)
        await batcher.stop()
    assert result.token_counts == [1]


async def test_inference_runs_on_the_executor_not_the_loop() -> None:
    encoder = FakeEncoder()
    with ThreadPoolExecutor(1, thread_name_prefix="inference") as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=8, max_wait_s=0,
                               max_queued_texts=100)  # fmt: skip
        batcher.start()
        await batcher.encode(["x"])
        await batcher.stop()
    assert all(name.startswith("inference") for name in encoder.threads)


async def test_overload_is_refused_not_queued_without_bound() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=2, max_wait_s=0,
                               max_queued_texts=3)  # fmt: skip
        batcher.start()
        first = asyncio.create_task(batcher.encode(["a", "b", "c"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.encode(["d"])
        gate.set()
        await first
        await batcher.stop()


async def test_an_encode_error_reaches_every_caller_of_the_batch() -> None:
    class Broken(FakeEncoder):
        def encode(self, texts: list[str]):  # type: ignore[no-untyped-def]
            raise RuntimeError("model crashed")

    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(Broken(), pool, max_batch_size=8, max_wait_s=0.02,
                               max_queued_texts=100)  # fmt: skip
        batcher.start()
        results = await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b"]),
                                       return_exceptions=True)  # fmt: skip
        await batcher.stop()
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_a_large_request_is_split_at_the_batch_size_and_joined_in_order() -> None:
    encoder = FakeEncoder()
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=4, max_wait_s=0,
                               max_queued_texts=100)  # fmt: skip
        batcher.start()
        texts = ["x" * (i + 1) for i in range(10)]
        result = await batcher.encode(texts)
        await batcher.stop()
    assert [len(b) for b in encoder.batches] == [4, 4, 2]
    # Rows come back in the request's order (column 0 is the text's length).
    assert result.vectors[:, 0].tolist() == [float(i + 1) for i in range(10)]
    assert result.token_counts == [1] * 10


async def test_a_query_overtakes_a_bulk_request_of_lower_priority() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=4, max_wait_s=0,
                               max_queued_texts=100)  # fmt: skip
        batcher.start()
        bulk = asyncio.create_task(batcher.encode([f"bulk{i}" for i in range(12)], priority=1))
        assert await asyncio.to_thread(encoder.waiting.wait, 5)  # the first bulk batch runs
        query = asyncio.create_task(batcher.encode(["query"], priority=0))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(bulk, query)
        await batcher.stop()
    # The query runs next, alone (not padded out with bulk texts), ahead of
    # the rest of the bulk request.
    assert encoder.batches == [
        ["bulk0", "bulk1", "bulk2", "bulk3"],
        ["query"],
        ["bulk4", "bulk5", "bulk6", "bulk7"],
        ["bulk8", "bulk9", "bulk10", "bulk11"],
    ]


async def test_priorities_go_in_order_and_equal_ones_in_arrival_order() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=2, max_wait_s=0,
                               max_queued_texts=100)  # fmt: skip
        batcher.start()
        first = asyncio.create_task(batcher.encode(["warm"]))
        assert await asyncio.to_thread(encoder.waiting.wait, 5)
        later = [asyncio.create_task(batcher.encode([f"r{i}"], priority=1)) for i in range(4)]
        urgent = asyncio.create_task(batcher.encode(["u"], priority=-1))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, urgent, *later)
        await batcher.stop()
    assert encoder.batches[1:] == [["u"], ["r0", "r1"], ["r2", "r3"]]


async def test_a_caller_that_leaves_mid_request_frees_its_queued_texts() -> None:
    gate = threading.Event()
    encoder = FakeEncoder(gate)
    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(encoder, pool, max_batch_size=2, max_wait_s=0,
                               max_queued_texts=6)  # fmt: skip
        batcher.start()
        leaving = asyncio.create_task(batcher.encode(["a", "b", "c", "d", "e", "f"]))
        assert await asyncio.to_thread(encoder.waiting.wait, 5)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        gate.set()
        # The four texts still queued for the cancelled caller are dropped, not
        # encoded, and their room goes to the next request.
        result = await asyncio.wait_for(batcher.encode(["g", "h", "i", "j", "k", "l"]), 5)
        await batcher.stop()
    assert result.vectors.shape[0] == 6
    assert all(text not in batch for batch in encoder.batches for text in "cdef")
