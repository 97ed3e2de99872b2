"""Where a chat turn's memory work goes, stage by stage (issue 18): CPU per stage.

    .venv/bin/python -m bench.recall_stages [--users 10] [--memories 200] [--n 300] \
        [--out bench/results/recall_stages.json]

Builds the gateway's own memory parts in this process (the embedder client
over aiohttp and over httpx, Qdrant Edge, BM25, the outbox) against a real
embedder process pinned alone on CPU 1, seeds ``--users`` users with
``--memories`` memories each, then runs each stage ``--n`` times, one after
the other, and reports this process's CPU per call (``process_time``: what
the stage costs the gateway's core) beside the wall time. The embedder's
share is timed too: the encoder alone in this process on one thread (one
query; and 512 texts of 8-30 words in batches of 8, in the order given and
shortest first). CPU time is what a loaded machine inflates least, so the
figures are usable when the wall clock is not; the load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from bench import procs
from embedder.model import load_encoder
from embedder.settings import EmbedderSettings
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import BACKGROUND, EmbedderClient
from gateway.memory.indexing import compose
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.store import PointVectors, QueryVectors, StoredPoint
from gateway.metrics import GatewayMetrics
from gateway.upstream.http import UpstreamHTTP

WORDS = " ".join(
    [
        "I went to the market on Saturday and bought fresh tomatoes basil and a loaf of bread",
        "my sister called to say her new job at the hospital starts next month she is nervous",
        "we are planning a trip to the mountains in October with the kids and the dog",
    ]
).split()


def sentence(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(WORDS))
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    walls, cpus = [], []
    for i in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        await call(i)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {
        "cpu_ms": 1000 * statistics.fmean(cpus),
        "wall_p50_ms": 1000 * statistics.median(walls),
        "wall_p90_ms": 1000 * statistics.quantiles(walls, n=10)[-1],
    }


async def seed(client: EmbedderClient, store: EdgeStore, scope: Scope, n: int) -> None:
    rng, bm25 = random.Random(scope.user_id), Bm25Encoder()
    texts = [f"Memory {k}: {sentence(rng, rng.randint(8, 24))}" for k in range(n)]
    vectors = await client.embed(texts, priority=BACKGROUND)
    points = []
    for k, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        window = list(zip(texts[max(0, k - 2) : k], vectors[max(0, k - 2) : k], strict=True))
        both = PointVectors(
            vector, compose([*window, (text, vector)]), bm25.document(text), bm25.document(text)
        )
        memory = NewMemory(text=text, created_at=datetime.now(UTC), session_id="s")
        points.append(StoredPoint(memory_id(scope, text), both, memory, time.time_ns()))
    await store.upsert(scope, points)


def main_thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread: in the embedder, the HTTP handling (the
    model runs on its inference thread)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gateway_stages(
    args: argparse.Namespace, embedder_url: str, embedder_pid: int
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="stages-", dir=procs.WORK))
    metrics = GatewayMetrics(CollectorRegistry())
    rng = random.Random(1)
    queries = [
        f"Turn 9-{i}: {sentence(rng, 14)}; what do you think about travel and books?"
        for i in range(args.n)
    ]
    out: dict[str, Any] = {}
    async with UpstreamHTTP() as aio, httpx.AsyncClient(timeout=30) as hx:
        clients = {
            "aiohttp": EmbedderClient(aio, embedder_url, 384, metrics),
            "httpx": EmbedderClient(hx, embedder_url, 384, metrics),
        }
        for name, client in clients.items():
            await client.embed(queries[:20])  # connections up, embedder warm
            http_s, all_s = main_thread_cpu_s(embedder_pid), procs.cpu_seconds(embedder_pid)
            out[f"embed_query_{name}"] = await timed(
                args.n, lambda i, c=client: c.embed([queries[i]])
            )
            if name == "aiohttp":  # the embedder's side of the same calls
                out["embedder_http_handling"] = {
                    "cpu_ms": 1000 * (main_thread_cpu_s(embedder_pid) - http_s) / args.n
                }
                out["embedder_whole_request"] = {
                    "cpu_ms": 1000 * (procs.cpu_seconds(embedder_pid) - all_s) / args.n
                }
        store = EdgeStore(work / "edge", 384)
        await store.open()
        scopes = [Scope("default", f"user-{u}") for u in range(args.users)]
        for scope in scopes:
            await seed(clients["aiohttp"], store, scope, args.memories)
        [vector] = await clients["aiohttp"].embed([queries[0]])
        bm25 = Bm25Encoder()
        out["bm25_query"] = await timed(args.n, lambda i: asyncio.sleep(0, bm25.query(queries[i])))
        qv = QueryVectors(vector, bm25.query(queries[0]))
        out["store_search_top10"] = await timed(
            args.n, lambda i: store.search(scopes[i % len(scopes)], qv, 10, (), 0.0)
        )
        await store.close()
    outbox = Outbox(work / "outbox.sqlite3")
    outbox.open()
    now = datetime.now(UTC)
    turn = [
        NewMemory(text=queries[0], created_at=now, role="user", source="chat"),
        NewMemory(text="echo: " + queries[0], created_at=now, role="assistant", source="chat"),
    ]
    out["outbox_put_turn"] = await timed(
        args.n, lambda i: outbox.put(scopes[i % len(scopes)], turn)
    )
    outbox.close()
    return out


def encoder_stages(n: int) -> dict[str, Any]:
    encoder = load_encoder(EmbedderSettings(threads=1))
    rng = random.Random(7)
    queries = [f"Turn 9-{i}: {sentence(rng, 14)}; what do you think of travel?" for i in range(n)]
    encoder.encode(queries[:20])
    c0 = time.process_time()
    for q in queries:
        encoder.encode([q])
    out: dict[str, Any] = {"encode_one_query_cpu_ms": 1000 * (time.process_time() - c0) / n}
    texts = [f"Imported {k}: {sentence(rng, rng.randint(8, 30))}" for k in range(512)]
    for name, order in (("given", texts), ("shortest_first", sorted(texts, key=len))):
        c0 = time.process_time()
        for i in range(0, len(order), 8):
            encoder.encode(order[i : i + 8])
        out[f"encode_batches_of_8_{name}_cpu_ms_per_text"] = (
            1000 * (time.process_time() - c0) / len(texts)
        )
    # The same query costs more after a pause: most likely the weights have left the caches.
    for name, pause in (("back_to_back", 0.0), ("after_50ms_idle", 0.05)):
        out[f"encode_one_query_wall_p50_ms_{name}"] = _wall_p50(encoder, queries[:100], pause)
    return out


def _wall_p50(encoder: Any, queries: list[str], pause_s: float) -> float:
    walls = []
    for q in queries:
        if pause_s:
            time.sleep(pause_s)
        t0 = time.perf_counter()
        encoder.encode([q])
        walls.append(time.perf_counter() - t0)
    return 1000 * statistics.median(walls)


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    out = [
        "# Where a chat turn's memory work goes: CPU per stage\n",
        f"Machine: {m['nproc']} x {m['cpu_model']}; load average at start "
        f"{data['loadavg_start']}, at end {data['loadavg_end']}; git {data['git']}. "
        f"Command: `{data['command']}`. CPU is this process's (the gateway's side) per "
        "call; wall times are only meaningful on a quiet machine.\n",
        "| stage (embedder_*: the embedder's CPU per query call) | CPU ms/call | "
        "wall p50 / p90 ms |\n|---|---|---|",
    ]
    for name, row in data["gateway"].items():
        wall = (
            f"{row['wall_p50_ms']:.2f} / {row['wall_p90_ms']:.2f}" if "wall_p50_ms" in row else ""
        )
        out.append(f"| {name} | {row['cpu_ms']:.2f} | {wall} |")
    out.append("\n| encoder (ONNX int8, one thread, in process) | ms |\n|---|---|")
    for name, value in data["encoder"].items():
        out.append(f"| {name} | {value:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--memories", type=int, default=200)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--embedder-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "recall_stages.json")
    args = p.parse_args()
    procs.WORK.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "command": "python -m bench.recall_stages " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "loadavg_start": procs.loadavg(),
    }
    embedder = procs.start_embedder(procs.WORK / "stages-logs", args.embedder_cpus)
    try:
        data["gateway"] = asyncio.run(gateway_stages(args, embedder.base_url + "/v1", embedder.pid))
    finally:
        embedder.terminate()
    data["encoder"] = encoder_stages(args.n)
    procs.save_results(args.out, data, markdown)


if __name__ == "__main__":
    main()
