"""What the replayer's flush of Qdrant Edge costs, per batch and per chat turn.

    .venv/bin/python -m bench.replay_flush --label after [--memories 20000]
        [--users 2000] [--batches 30] [--turns 200] [--rate 20] [--cpus 0]
        [--out bench/results/replay_flush.json]

The replayer deletes the outbox rows of a batch only after ``EdgeStore.flush``
(the shard's WAL and segments written to disk), so a power cut cannot lose
a write answered with 202. This measures that flush against the rest of a
batch's store-side work, on a shard bulk-loaded the way ``memory_scale.py``
loads it (``--memories`` over ``--users``), under the data dir's disk
(bench/.work), for the two shapes of batch the replayer makes:

* a background batch: 64 outbox entries (chat turns of 2 memories, 64
  users), one upsert per user;
* a read-your-writes batch: one user's one entry, replayed alone while a
  recall waits for it.

Per batch: the upserts, the flush, and the outbox delete (``Outbox.done``,
an SQLite commit with ``synchronous=FULL``). While the flush runs on a
worker thread, as the gateway runs it, the event loop keeps a 1 ms timer:
its longest wait is how long every request waits on a flush.

Then the replayer itself, as the gateway runs it (``MemoryService`` over the
same shard, an in-process embedder answering at once): ``--turns`` chat
turns of 50 users, one every ``1/--rate`` s, each queued as the relay
queues it, then waited for as the user's next recall would wait
(``wait_stored``). Counted: the flushes, the event loop's time blocked
(every wait of its 1 ms timer beyond 5 ms, summed) and the wait for each
turn. This part uses only what the memory service had before the flushes
were coalesced, so ``--label before`` can be run at that commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from bench import memory_scale, procs
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope
from gateway.memory.service import MemoryService
from gateway.memory.sparse import Bm25Encoder
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor


async def loop_stall_ms(work: Any) -> tuple[float, float]:
    """Run ``work`` on a worker thread; (its seconds in ms, the loop's longest wait in ms)."""
    stalls: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append((time.perf_counter() - t - 0.001) * 1000)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    stalls.clear()
    started = time.perf_counter()
    await asyncio.to_thread(work)
    took = (time.perf_counter() - started) * 1000
    running = False
    await task
    return took, max(stalls, default=0.0)


async def one_batch(
    store: EdgeStore, outbox: Outbox, users: list[int], gen: memory_scale.TextGen, seed: int
) -> dict[str, float]:
    bm25 = Bm25Encoder()
    rng = np.random.default_rng(seed)
    written_at = time.time_ns()
    seqs = []
    batches = []
    for u in users:
        scope = Scope(memory_scale.TENANT, f"user-{u}")
        points = memory_scale.user_points(scope, 2, u, gen, bm25, rng, written_at)
        written_at += 2
        seqs.append(outbox.put_sync(scope, [p.memory for p in points]))
        batches.append((scope, points))
    t = time.perf_counter()
    for scope, points in batches:
        await store.upsert(scope, points)
    upsert_ms = (time.perf_counter() - t) * 1000
    shard = store._shard  # the bench times the call under the adapter, on its own thread
    assert shard is not None
    flush_ms, stall_ms = await loop_stall_ms(shard.flush)
    t = time.perf_counter()
    await outbox.done(seqs)
    done_ms = (time.perf_counter() - t) * 1000
    return {"upsert_ms": upsert_ms, "flush_ms": flush_ms, "loop_stall_ms": stall_ms,
            "outbox_delete_ms": done_ms}  # fmt: skip


def instant_embedder(metrics: GatewayMetrics) -> tuple[EmbedderClient, httpx.AsyncClient]:
    rng = np.random.default_rng(9)

    def handle(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        vectors = memory_scale.unit_vectors(rng, len(texts))
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
        return httpx.Response(200, json={"data": data})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return EmbedderClient(http, "http://embedder/v1", memory_scale.DIM, metrics), http


async def trickle(store: EdgeStore, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    metrics = GatewayMetrics(CollectorRegistry())
    embedder, http = instant_embedder(metrics)
    outbox = Outbox(path / "trickle.sqlite3")
    outbox.open()
    monitors = [Monitor("embedder", embedder.probe), Monitor("vector_store", store.ping)]
    for monitor in monitors:
        monitor.report_success()
    service = MemoryService(store, embedder, outbox, metrics, *monitors)
    flushes = 0
    flush = store.flush

    async def counted() -> None:
        nonlocal flushes
        flushes += 1
        await flush()

    store.flush = counted  # type: ignore[method-assign]
    blocked: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            blocked.append((time.perf_counter() - t - 0.001) * 1000)

    tick = asyncio.create_task(ticker())
    service.start_replayer()
    waits = []
    started = time.perf_counter()
    for i in range(args.turns):
        await asyncio.sleep(max(0.0, started + i / args.rate - time.perf_counter()))
        scope = Scope(memory_scale.TENANT, f"trickle-{i % 50}")
        when = memory_scale.BASE_DATE
        turn = [
            NewMemory(f"turn {i}: a question about the weather in town", when, role="user"),
            NewMemory(f"turn {i}: sunny, and warm for the season", when, role="assistant"),
        ]
        await service.enqueue(scope, turn)
        t = time.perf_counter()
        assert await service.wait_stored(scope, 10)
        waits.append((time.perf_counter() - t) * 1000)
    seconds = time.perf_counter() - started
    await service.stop_replayer()
    running = False
    await tick
    [(rows,)] = outbox._execute("SELECT COUNT(*) FROM outbox")
    outbox.close()
    await http.aclose()
    store.flush = flush  # type: ignore[method-assign]
    long_waits = [b for b in blocked if b > 5]
    return {"turns": args.turns, "rate": args.rate, "seconds": seconds, "flushes": flushes,
            "rows_left": rows, "loop_blocked_ms": sum(long_waits),
            "loop_waits_over_5ms": len(long_waits),
            "wait_stored_ms": memory_scale.pct(waits)}  # fmt: skip


def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {key: memory_scale.pct([r[key] for r in rows]) for key in rows[0]}


async def run(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """Fill ``data`` (this run's part of the results)."""
    procs.WORK.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="flush-", dir=procs.WORK))
    store = EdgeStore(path / "edge", memory_scale.DIM)
    outbox = Outbox(path / "outbox.sqlite3")
    outbox.open()
    await store.open()
    gen = memory_scale.TextGen(11)
    try:
        if args.memories:
            data["load"] = await memory_scale.bulk_load(store, args.memories, args.users, seed=5)
        await store.flush()
        idle_ms, _ = await loop_stall_ms(lambda: store._shard.flush())  # type: ignore[union-attr]
        data["idle_flush_ms"] = idle_ms
        shapes = {"64 entries (background)": 64, "1 entry (read-your-writes)": 1}
        data["shapes"] = {}
        for name, entries in shapes.items():
            rows = []
            for b in range(args.batches):
                users = [(b * entries + k) % args.users for k in range(entries)]
                rows.append(await one_batch(store, outbox, users, gen, seed=100 + b))
            data["shapes"][name] = summary(rows)
        data["trickle"] = await trickle(store, path, args)
    finally:
        await store.close()
        outbox.close()
        shutil.rmtree(path)


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Replay: the cost of flushing Qdrant Edge before the outbox rows go", ""]
    for label, data in results["runs"].items():
        lines += [
            f"## {label}",
            "",
            f"Machine: {data['machine']['nproc']} x {data['machine']['cpu_model']}; load "
            f"average {data['machine']['loadavg']} (end {data['loadavg_end']}); git "
            f"{data['git']}. Command: `{data['command']}`",
            "",
            f"Shard: {data['memories']:,} memories of {data['users']:,} users, {data['dim']} "
            f"dimensions, on the disk under bench/.work; {data['batches']} batches of each "
            f"shape. A flush with nothing new to write: {data['idle_flush_ms']:.1f} ms.",
            "",
            "| batch | upserts p50 / p95 ms | flush p50 / p95 ms | loop's longest wait "
            "during the flush p50 / p99 ms | outbox delete p50 / p95 ms |",
            "|---|---|---|---|---|",
        ]
        for name, s in data["shapes"].items():
            u, f, st, d = s["upsert_ms"], s["flush_ms"], s["loop_stall_ms"], s["outbox_delete_ms"]
            lines.append(
                f"| {name} | {u['p50']:.1f} / {u['p95']:.1f} | {f['p50']:.1f} / {f['p95']:.1f} "
                f"| {st['p50']:.1f} / {st['p99']:.1f} | {d['p50']:.1f} / {d['p95']:.1f} |"
            )
        t = data.get("trickle")
        if t:
            w = t["wait_stored_ms"]
            lines += [
                "",
                f"The replayer, {t['turns']} chat turns at {t['rate']:g}/s ({t['seconds']:.1f} "
                f"s): {t['flushes']} flushes; the event loop blocked {t['loop_blocked_ms']:,.0f} "
                f"ms in all ({t['loop_waits_over_5ms']} waits over 5 ms); a turn waited for "
                f"(read-your-writes) p50 {w['p50']:.1f} / p95 {w['p95']:.1f} / p99 "
                f"{w['p99']:.1f} ms; rows left after stop: {t['rows_left']}.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", required=True)
    p.add_argument("--memories", type=int, default=20_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--cpus", default="0")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "replay_flush.json")
    args = p.parse_args()
    procs.pin_self(args.cpus, "bench.replay_flush")
    data: dict[str, Any] = {
        "command": "python -m bench.replay_flush " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "memories": args.memories,
        "users": args.users,
        "batches": args.batches,
        "dim": memory_scale.DIM,
    }
    asyncio.run(run(args, data))
    data["loadavg_end"] = procs.loadavg()
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = {"runs": {**old.get("runs", {}), args.label: data}}
    procs.write_json(args.out, results)
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
