"""Memory at scale: recall latency and write rate with 1k / 100k / 1M stored memories.

    .venv/bin/python bench/memory_scale.py [--sizes 1000,100000,1000000] [--users 10000]
        [--stores edge,server] [--server-max 100000] [--queries 300] [--cpus 0] [--embedder-cpus 1]
        [--out bench/results/memory_scale.json]

For each store and size, in this (pinned) process:
  * bulk load: N memories spread round-robin over --users users (10k; with
    1k memories, 1k of the users have one each), one ``store.upsert`` per user
    (the gateway writes per user), with SYNTHETIC random unit vectors (numpy,
    fixed seed) and the gateway's real payloads (``to_payload``). Reported as
    points/s; this is the store's raw write rate, not the embedder's.
  * recall, as a chat turn does it: the gateway's own ``MemoryService.recall``
    (the real embedder over HTTP for the query text, then the store's filtered
    search, top 5) followed by ``format_memories`` + ``inject_memories``
    (prompt building). --queries sequential recalls for random users that have
    memories; p50/p95/p99 of the whole, and of each part (embed, search,
    prompt). ``min_score`` is off: random vectors score ~0, and the threshold
    would hide the payload fetch; every recall returns 5 memories (or all
    the user has).
  * writes through the gateway's path, ``MemoryService.write_now`` (existing-id
    check, embed, upsert) of one new memory at a time: sequential and with 8
    concurrent writers, as writes/s.
Stores: Qdrant Edge (``EdgeStore``, the embedded default, on disk under
bench/.work) and the server adapter (``QdrantServerStore``) with
``":memory:"``, i.e. qdrant-client's LOCAL mode: a pure-Python brute-force
emulation, not a Qdrant server; its numbers say nothing about a real server
and are capped at --server-max memories.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procs
from procs import ROOT, WORK

sys.path.insert(0, str(ROOT))
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.outbox import Outbox
from gateway.memory.prompt import format_memories, inject_memories
from gateway.memory.qdrant_store import QdrantServerStore
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.service import MemoryService
from gateway.memory.store import StoredPoint
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor

DIM = 384
TENANT = "default"
QUERIES = [
    "what pet does she have?", "where do I live?", "what am I allergic to?",
    "which book am I reading?", "when is my sister's birthday?", "what do I do for work?",
    "suggest a snack I can buy near home", "plan a weekend trip for me",
]  # fmt: skip


def pct(values: list[float]) -> dict[str, float]:
    xs = sorted(values)

    def at(p: float) -> float:
        return xs[min(len(xs) - 1, round(p / 100 * len(xs) + 0.5) - 1)]

    return {"p50": at(50), "p95": at(95), "p99": at(99), "mean": statistics.fmean(xs)}


class TimedEmbedder(EmbedderClient):
    """The gateway's client, timing each call (to split recall into its parts)."""

    last_s = 0.0

    async def embed(self, texts: Any) -> list[list[float]]:
        t = time.perf_counter()
        try:
            return await super().embed(texts)
        finally:
            self.last_s = time.perf_counter() - t


def make_store(kind: str, path: Path) -> Any:
    if kind == "edge":
        return EdgeStore(path / "edge", DIM)
    return QdrantServerStore(":memory:", None, "bench", DIM)


async def bulk_load(store: Any, n: int, users: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    per_user: dict[int, list[int]] = {}
    for i in range(n):
        per_user.setdefault(i % users, []).append(i)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for u, items in per_user.items():
        scope = Scope(TENANT, f"user-{u}")
        v = rng.standard_normal((len(items), DIM), dtype=np.float32)
        vectors = (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()
        points = []
        for i, vector in zip(items, vectors, strict=True):
            text = f"synthetic memory {i} of user {u}"
            memory = NewMemory(text, now, {"source": "bench"}, None, "user", "api")
            points.append(StoredPoint(memory_id(scope, text), vector, memory))
        await store.upsert(scope, points)
    elapsed = time.perf_counter() - started
    return {"points": n, "users_with_memories": len(per_user), "seconds": elapsed,
            "points_per_s": n / elapsed}  # fmt: skip


async def recall_bench(service: MemoryService, embedder: TimedEmbedder, n: int, users: int,
                       queries: int, seed: int) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    populated = min(n, users)
    total, embed, search, prompt, hits = [], [], [], [], []
    for q in range(queries + 10):
        scope = Scope(TENANT, f"user-{rng.randrange(populated)}")
        query = f"{rng.choice(QUERIES)} ({q})"
        messages = [{"role": "user", "content": query}]
        t0 = time.perf_counter()
        records = await service.recall(scope, query, 5, -1.0)
        t1 = time.perf_counter()
        inject_memories(messages, format_memories(records))
        t2 = time.perf_counter()
        if q < 10:
            continue  # warm-up
        total.append((t2 - t0) * 1000)
        embed.append(embedder.last_s * 1000)
        search.append((t1 - t0 - embedder.last_s) * 1000)
        prompt.append((t2 - t1) * 1000)
        hits.append(len(records))
    return {
        "queries": queries,
        "recall_ms": pct(total),
        "embed_ms": pct(embed),
        "search_ms": pct(search),
        "prompt_ms": pct(prompt),
        "mean_hits": statistics.fmean(hits),
    }


async def write_bench(
    service: MemoryService, seconds: float, concurrency: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    count = 0
    stop = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            scope = Scope(TENANT, f"user-{rng.randrange(10_000)}")
            text = f"new fact {w}-{count}-{rng.random():.12f}: likes {rng.choice(QUERIES)}"
            await service.write_now(scope, [NewMemory(text, now, {}, None, "user", "api")])
            count += 1

    t = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(concurrency)))
    return {"concurrency": concurrency, "writes": count,
            "writes_per_s": count / (time.perf_counter() - t)}  # fmt: skip


async def one_case(
    kind: str, n: int, args: argparse.Namespace, embedder_url: str
) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix=f"mem-{kind}-{n}-", dir=WORK))
    store = make_store(kind, path)
    await store.open()
    metrics = GatewayMetrics(CollectorRegistry())
    outbox = Outbox(path / "outbox.sqlite3")
    outbox.open()
    async with httpx.AsyncClient(timeout=30) as http:
        embedder = TimedEmbedder(http, embedder_url, DIM, metrics)

        async def ok() -> None:
            return None

        monitors = [Monitor(name, ok) for name in ("embedder", "vector_store")]
        for m in monitors:
            m.report_success()
        service = MemoryService(store, embedder, outbox, metrics, *monitors)
        print(f"[{kind} {n}] bulk loading ...", flush=True)
        load = await bulk_load(store, n, args.users, seed=n)
        print(f"[{kind} {n}] {load['points_per_s']:.0f} points/s; recall ...", flush=True)
        gc.collect()
        recall = await recall_bench(service, embedder, n, args.users, args.queries, seed=1)
        print(f"[{kind} {n}] recall p50 {recall['recall_ms']['p50']:.2f} "
              f"p95 {recall['recall_ms']['p95']:.2f} ms; writes ...", flush=True)  # fmt: skip
        writes = [await write_bench(service, args.write_seconds, c, seed=c) for c in (1, 8)]
        rss = procs.rss_bytes(__import__("os").getpid()) / 2**20
    await store.close()
    outbox.close()
    shutil.rmtree(path, ignore_errors=True)
    return {"store": kind, "memories": n, "load": load, "recall": recall, "writes": writes,
            "rss_mib_after": rss, "loadavg": procs.loadavg()}  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Memory at scale",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; load average at start "
        f"{m['loadavg']}, at end {data['loadavg_end']}. Benchmark process on CPU {data['cpus']}, "
        f"embedder (1 torch thread) on CPU {data['embedder_cpus']}. {data['users']} users; "
        "bulk-loaded vectors are synthetic random unit vectors, query vectors come from the real "
        "embedder. `server` = QdrantServerStore on qdrant-client's local `:memory:` mode "
        "(a Python emulation, not a Qdrant server). Command: `" + data["command"] + "`",
        "",
        "| store | memories | recall p50 ms | recall p95 ms | recall p99 ms | embed p50 | search p50 / p95 | prompt p50 | bulk load points/s | writes/s (1 / 8 writers) | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if "skipped" in r:
            lines.append(f"| {r['store']} | {r['memories']:,} | {r['skipped']} ||||||||| ")
            continue
        rc = r["recall"]
        w = {x["concurrency"]: x["writes_per_s"] for x in r["writes"]}
        lines.append(
            f"| {r['store']} | {r['memories']:,} | {rc['recall_ms']['p50']:.2f} | "
            f"{rc['recall_ms']['p95']:.2f} | {rc['recall_ms']['p99']:.2f} | "
            f"{rc['embed_ms']['p50']:.2f} | {rc['search_ms']['p50']:.2f} / {rc['search_ms']['p95']:.2f} | "
            f"{rc['prompt_ms']['p50']:.3f} | {r['load']['points_per_s']:,.0f} | "
            f"{w.get(1, 0):.0f} / {w.get(8, 0):.0f} | {r['rss_mib_after']:.0f} |"
        )
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, embedder_url: str, data: dict[str, Any]) -> None:
    for kind in args.stores.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            if kind == "server" and n > args.server_max:
                data["results"].append({"store": kind, "memories": n, "skipped":
                    f"local mode is capped at {args.server_max:,} (brute force in Python)"})  # fmt: skip
                continue
            result = await one_case(kind, n, args, embedder_url)
            data["results"].append(result)
            procs.write_json(args.out, data)  # partial results survive a timeout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,100000,1000000")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--stores", default="edge,server")
    p.add_argument("--server-max", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--write-seconds", type=float, default=5.0)
    p.add_argument("--cpus", default="0")
    p.add_argument("--embedder-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "memory_scale.json")
    args = p.parse_args()
    procs.exit_on_sigterm()
    import os

    if args.cpus and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    data: dict[str, Any] = {
        "command": "python bench/memory_scale.py " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "cpus": args.cpus,
        "embedder_cpus": args.embedder_cpus,
        "users": args.users,
        "results": [],
    }
    run_dir = Path(tempfile.mkdtemp(prefix="memscale-", dir=WORK))
    embedder = procs.start_embedder(run_dir / "logs", args.embedder_cpus)
    try:
        asyncio.run(run(args, embedder.base_url + "/v1", data))
    finally:
        embedder.stop()
        data["loadavg_end"] = procs.loadavg()
        procs.write_json(args.out, data)
        args.out.with_suffix(".md").write_text(markdown(data))
        print(markdown(data))
        json.dumps(data)


if __name__ == "__main__":
    main()
