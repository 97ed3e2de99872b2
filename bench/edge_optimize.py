"""Should the gateway run Qdrant Edge's ``optimize()``? What it costs and what it gives.

    .venv/bin/python -m bench.edge_optimize [--memories 100000] [--users 10000]
        [--delete-share 0.3] [--cpus 0] [--out bench/results/edge_optimize.json]

An ``EdgeStore`` like the gateway's is bulk-loaded the way ``memory_scale.py``
loads it (real ids, texts, BM25 vectors and payloads; random unit dense
vectors), then ``--delete-share`` of its users are forgotten, as
``DELETE /v1/users/{id}`` does. Measured before and after ``optimize()``:
the filtered hybrid search the gateway runs (one user, four prefetches, RRF),
the shard's segments and size on disk, and the process's RSS. While
``optimize()`` runs on a worker thread, as ``asyncio.to_thread`` would run it
in the gateway, the event loop keeps a 10 ms timer and a stream of searches
going: how long the loop could not run is what every request would wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import memory_scale, procs
from gateway.memory.edge_store import EdgeStore
from gateway.memory.records import Scope
from gateway.memory.sparse import Sparse
from gateway.memory.store import QueryVectors


async def searches(store: EdgeStore, users: int, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    vectors = memory_scale.unit_vectors(np.random.default_rng(seed), 64)
    took = []
    for i in range(n):
        scope = Scope(memory_scale.TENANT, f"user-{rng.randrange(users)}")
        query = QueryVectors(vectors[i % 64], Sparse([], []))
        t = time.perf_counter()
        await store.search(scope, query, 5)
        took.append((time.perf_counter() - t) * 1000)
    return took


async def optimize_under_load(store: EdgeStore, users: int) -> dict[str, Any]:
    stalls: list[float] = []
    during: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            stalls.append((time.perf_counter() - t - 0.01) * 1000)

    async def searcher() -> None:
        while running:
            during.extend(await searches(store, users, 1, len(during)))

    tasks = [asyncio.create_task(ticker()), asyncio.create_task(searcher())]
    shard = store._shard  # the bench reaches under the adapter: the gateway has no optimize
    assert shard is not None
    started = time.perf_counter()
    changed = await asyncio.to_thread(shard.optimize)
    seconds = time.perf_counter() - started
    running = False
    await asyncio.gather(*tasks)
    return {"changed": changed, "seconds": seconds, "loop_ticks": len(stalls),
            "loop_stall_max_ms": max(stalls, default=0.0), "searches_during": len(during),
            "search_max_ms_during": max(during, default=0.0)}  # fmt: skip


def state(store: EdgeStore, path: Path) -> dict[str, Any]:
    assert store._shard is not None
    info = store._shard.info()
    return {"segments": info.segments_count, "points": info.points_count,
            "disk_mib": memory_scale.dir_bytes(path) / 2**20,
            "rss_mib": procs.rss_bytes(os.getpid()) / 2**20}  # fmt: skip


async def run(args: argparse.Namespace, data: dict[str, Any]) -> None:
    path = Path(tempfile.mkdtemp(prefix="optimize-", dir=procs.WORK))
    store = EdgeStore(path / "edge", memory_scale.DIM)
    await store.open()
    try:
        data["load"] = await memory_scale.bulk_load(store, args.memories, args.users, seed=5)
        data["loaded"] = state(store, path)
        data["search_loaded"] = memory_scale.pct(await searches(store, args.users, 300, 1))
        forgotten = int(args.users * args.delete_share)
        for u in range(forgotten):
            await store.delete_scope(Scope(memory_scale.TENANT, f"user-{u}"))
        data["forgotten_users"] = forgotten
        data["after_delete"] = state(store, path)
        data["optimize"] = await optimize_under_load(store, args.users)
        data["after_optimize"] = state(store, path)
        data["search_optimized"] = memory_scale.pct(await searches(store, args.users, 300, 1))
    finally:
        await store.close()


def markdown(data: dict[str, Any]) -> str:
    o = data["optimize"]
    rows = [("loaded", data["loaded"], data["search_loaded"]),
            (f"{data['forgotten_users']:,} users forgotten", data["after_delete"], None),
            ("optimized", data["after_optimize"], data["search_optimized"])]  # fmt: skip
    lines = [
        "# Qdrant Edge: optimize() or not",
        "",
        f"Machine: {data['machine']['nproc']} x {data['machine']['cpu_model']}; load average "
        f"{data['machine']['loadavg']}; git {data['git']}. Command: `{data['command']}`",
        "",
        "| state | segments | points | disk MiB | RSS MiB | search p50 / p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, s, search in rows:
        cell = f"{search['p50']:.2f} / {search['p95']:.2f}" if search else "-"
        lines.append(f"| {name} | {s['segments']} | {s['points']:,} | {s['disk_mib']:.0f} "
                     f"| {s['rss_mib']:.0f} | {cell} |")  # fmt: skip
    lines += [
        "",
        f"`optimize()` on a worker thread took {o['seconds']:.1f} s. Meanwhile the event loop "
        f"ran its 10 ms timer {o['loop_ticks']} time(s) (longest wait {o['loop_stall_max_ms']:,.0f}"
        f" ms) and finished {o['searches_during']} search(es).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memories", type=int, default=100_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--delete-share", type=float, default=0.3)
    p.add_argument("--cpus", default="0")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "edge_optimize.json")
    args = p.parse_args()
    procs.pin_self(args.cpus, "bench.edge_optimize")
    data: dict[str, Any] = {
        "command": "python -m bench.edge_optimize " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "memories": args.memories,
        "users": args.users,
    }
    asyncio.run(run(args, data))
    data["loadavg_end"] = procs.loadavg()
    procs.write_json(args.out, data)
    args.out.with_suffix(".md").write_text(markdown(data))
    print(json.dumps(data["optimize"]))
    print(markdown(data))


if __name__ == "__main__":
    main()
