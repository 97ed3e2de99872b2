"""Memory at scale: recall latency and write rate with 1k / 100k / 1M stored memories.

    .venv/bin/python -m bench.memory_scale [--sizes 1000,100000,1000000] [--users 10000]
        [--stores edge,server] [--server-max 100000] [--queries 300] [--server-queries 20]
        [--cpus 0] [--embedder-cpus 1] [--out bench/results/memory_scale.json]

For each store and size, in this (pinned) process:
  * bulk load: N memories spread round-robin over --users users (10k; with
    1k memories, 1k of the users have one each), one ``store.upsert`` per user
    (the gateway writes per user). Each point is built the way
    ``gateway.memory.writes.Writer.write`` builds it: id ``memory_id(scope, text)``,
    ``index_texts`` of the memory with the two before it in its session, the
    real BM25 sparse vectors (``Bm25Encoder.document``) of the dated text and
    of the session window, ``written_at`` in write order, and the real payload
    (``to_payload`` in the store). Only the two dense vectors (``text`` and
    ``ctx``) are SYNTHETIC random unit vectors (numpy, fixed seed), so that a
    million memories load in minutes instead of hours of embedding. The texts
    are synthetic chat-memory sentences from templates over a mixed vocabulary
    (common words, ~200 names, ~20k generated rare words drawn Zipf-like), so
    BM25's IDF and posting lists are not degenerate. Reported as points/s: the
    store's raw write rate plus BM25, not the embedder's.
  * recall, as a chat turn does it: the gateway's own ``MemoryService.recall``
    (the real embedder over HTTP for the query text, BM25 of the query, the
    store's hybrid search: four prefetches of 30 filtered by tenant and user,
    fused by RRF, top 5) followed by ``format_memories`` + ``inject_memories``
    (prompt building) into a 4-message conversation. --queries sequential
    recalls (unique chat-like questions from the same vocabulary) for random
    users that have memories; p50/p95/p99 of the whole, and of each part:
    embed (the HTTP call), search (``store.search``), other (BM25 of the query,
    metrics), prompt. ``min_score`` is off (-1): random dense vectors score ~0
    and the gateway's default 0.1 would empty the two dense lists and hide
    their cost; so every recall fuses four full lists and returns 5 memories
    (or all the user has).
  * writes through the gateway's path, ``MemoryService.write_now`` (existing-id
    check, session window, one embedder call for the text and its context,
    BM25, upsert) of one new memory at a time: sequential and with 8
    concurrent writers, as writes/s.
Stores: Qdrant Edge (``EdgeStore``, the embedded default, on disk under
bench/.work; never ``optimize()``d, as the gateway never calls it) and the
server adapter (``QdrantServerStore``) with ``":memory:"``, i.e.
qdrant-client's LOCAL mode: a pure-Python brute-force emulation, NOT a Qdrant
server; its numbers say nothing about a real server and are capped at
--server-max memories and --server-queries recalls.

The process re-executes itself under ``taskset -c --cpus`` so every thread
(numpy's, Qdrant Edge's, asyncio's workers) stays on that core; the embedder
(ONNX Runtime, one intra-op thread) runs on --embedder-cpus.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from bench import procs
from bench.procs import WORK
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.indexing import WINDOW, index_texts
from gateway.memory.outbox import Outbox
from gateway.memory.prompt import format_memories, inject_memories, last_user_text
from gateway.memory.qdrant_store import QdrantServerStore
from gateway.memory.records import MemoryRecord, NewMemory, Scope, memory_id
from gateway.memory.service import MemoryService
from gateway.memory.sparse import Bm25Encoder
from gateway.memory.store import PointVectors, StoredPoint
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor
from harness.process import ROOT

DIM = 384
TENANT = "default"
TOP_K = 5  # GATEWAY_MEMORY_TOP_K's default
SESSION_LEN = 10  # bulk-loaded memories per session (the context window runs within one)
BASE_DATE = datetime(2023, 1, 2, 9, 0, tzinfo=UTC)

# -- synthetic texts ------------------------------------------------------------
# Templates over a mixed vocabulary: common words every user shares (low IDF),
# ~200 names, and ~20k generated rare words drawn Zipf-like (high IDF, long
# posting-list tail), so BM25 sees something like real chat memories.


def _words(text: str) -> list[str]:
    return text.split()


WORDS: dict[str, list[str]] = {
    "relation": _words(
        "sister brother mother father cousin aunt uncle friend colleague neighbour "
        "partner wife husband son daughter grandmother grandfather roommate boss mentor"
    ),
    "pet": _words(
        "cat dog kitten puppy parrot hamster rabbit turtle goldfish horse ferret gecko canary pony"
    ),
    "food": _words(
        "peanuts shellfish gluten lactose sushi ramen tacos pizza pasta curry dumplings "
        "falafel hummus avocado mango strawberries chocolate espresso matcha kimchi tofu salmon "
        "lentils oatmeal bagels croissants pancakes cheesecake pho paella risotto"
    ),
    "city": _words(
        "Lisbon Porto Berlin Munich Paris Lyon Madrid Seville Rome Milan Vienna Prague "
        "Warsaw Krakow Dublin London Edinburgh Oslo Stockholm Helsinki Tallinn Riga Athens "
        "Istanbul Toronto Montreal Chicago Boston Seattle Denver Austin Tokyo Osaka Seoul "
        "Singapore Sydney Melbourne Auckland Nairobi Lagos"
    ),
    "place": _words(
        "lake park library gym bakery market station harbour museum cafe stadium beach "
        "mall hospital school office garden cinema theatre pharmacy"
    ),
    "hobby": _words(
        "hiking climbing cycling running swimming painting pottery knitting chess "
        "photography gardening baking surfing skiing yoga guitar piano salsa birdwatching "
        "woodworking calligraphy kayaking"
    ),
    "job": _words(
        "nurse teacher engineer designer accountant chef pilot lawyer pharmacist "
        "electrician architect journalist librarian dentist carpenter researcher barista "
        "translator firefighter veterinarian"
    ),
    "genre": _words(
        "mystery fantasy romance thriller biography poetry history science horror memoir"
    ),
    "adj": _words(
        "grey black white tiny huge shy noisy lazy clever old new red blue green quiet "
        "spicy sweet cheap expensive vintage electric cozy"
    ),
    "object": _words("shoes couch cables slippers books plants headphones socks blanket charger"),
    "car": _words("hatchback van pickup sedan scooter motorbike convertible wagon"),
    "weekday": _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday"),
    "month": _words(
        "January February March April May June July August September October November December"
    ),
    "org": _words("Labs Systems Health Foods Studio Logistics Bank Media Robotics Energy"),
}
_ONSETS = _words("b c d f g h j k l m n p r s t v w z br ch dr gl kr pl sh st th tr")
_VOWELS = _words("a e i o u ai ea io ou")
_CODAS = ["", "", "n", "r", "s", "l", "th", "x", "m", "nd"]


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _vocabulary(seed: int = 7) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < 200:
        names.add((_syllable(rng) + _syllable(rng)).capitalize())
    rare: set[str] = set()
    while len(rare) < 20_000:
        rare.add("".join(_syllable(rng) for _ in range(rng.choice((2, 3, 3, 4)))))
    return sorted(names), sorted(rare)


NAMES, RARE = _vocabulary()
# Zipf-like weights (s = 1.1): a few rare words recur, most are seen a handful of times.
_RARE_CUM = list(itertools.accumulate(1.0 / (i + 1) ** 1.1 for i in range(len(RARE))))

MEMORY_TEMPLATES = [
    "My {relation} {name} adopted a {adj} {pet} called {Rare}.",
    "I am allergic to {food} and {food}, so I avoid the {rare} place near the {place}.",
    "I moved to {city} in {month} and now live close to the {place}.",
    "I work as a {job} at {Rare} {org} and commute on {weekday}s.",
    "I'm reading {Rare} by {name}, a {adj} {genre} novel my {relation} lent me.",
    "{name}'s birthday is on {month} {n}; she loves {hobby} and {food}.",
    "We are planning a trip to {city} for {hobby} next {month} with {name}.",
    "I usually buy {food} at the {place} on {weekday} mornings.",
    "My {relation} {name} works as a {job} in {city}.",
    "I started learning {hobby} with {name} {n} weeks ago at the {rare} club.",
    "I prefer {adj} {food} over {food} for breakfast.",
    "The {pet} keeps chewing my {object}; the vet visit is on {weekday}.",
    "I drive a {adj} {car} and park it behind the {place}.",
    "My favourite band is {Rare} {Rare}; I saw them live in {city} in {month}.",
    "Suggested a {adj} {food} recipe with {food} for {weekday} dinner.",
    "Recommended visiting the {place} in {city} during {month} for {hobby}.",
    "I told {name} I would bring {food} to the {rare} party on {weekday}.",
    "I have been training for a {n} km run around the {place} in {city}.",
    "My {pet} {Rare} is afraid of the {adj} {object}.",
    "I lost my {object} at the {place}; {name} found them on {weekday}.",
]
QUERY_TEMPLATES = [
    "what was the name of my {relation}'s {pet} again?",
    "can you suggest a {food} recipe for {weekday}?",
    "where did I say I moved in {month}?",
    "remind me what {name} does for work",
    "any ideas for a {hobby} weekend in {city}?",
    "what am I allergic to besides {food}?",
    "which book by {name} was I reading?",
    "when is {name}'s birthday, and what should I get her?",
    "plan a trip to {city} for me and my {relation}",
    "help me write a message to {name} about the {place}",
    "is {food} safe for my {pet}?",
    "what did I say about {Rare} last time?",
    "how far was the run I was training for around the {place}?",
    "where do I usually buy {food}?",
]


class TextGen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def _fill(self, template: str) -> str:
        rng = self.rng

        def word(key: str) -> str:
            if key == "name":
                return rng.choice(NAMES)
            if key in ("rare", "Rare"):
                w = rng.choices(RARE, cum_weights=_RARE_CUM)[0]
                return w.capitalize() if key == "Rare" else w
            if key == "n":
                return str(rng.randint(2, 42))
            return rng.choice(WORDS[key])

        out, rest = [], template
        while "{" in rest:
            head, _, tail = rest.partition("{")
            key, _, rest = tail.partition("}")
            out += [head, word(key)]
        return "".join([*out, rest])

    def memory(self) -> str:
        return self._fill(self.rng.choice(MEMORY_TEMPLATES))

    def query(self) -> str:
        return self._fill(self.rng.choice(QUERY_TEMPLATES))


# -- measurement helpers --------------------------------------------------------


def pct(values: list[float]) -> dict[str, float]:
    xs = sorted(values)

    def at(p: float) -> float:
        return xs[min(len(xs) - 1, round(p / 100 * len(xs) + 0.5) - 1)]

    return {"p50": at(50), "p95": at(95), "p99": at(99), "mean": statistics.fmean(xs)}


class TimedEmbedder(EmbedderClient):
    """The gateway's client, timing each call (to split recall into its parts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_s = 0.0
        self.calls: list[float] = []

    async def embed(self, texts: Any) -> list[list[float]]:
        t = time.perf_counter()
        try:
            return await super().embed(texts)
        finally:
            self.last_s = time.perf_counter() - t
            self.calls.append(self.last_s)


class TimedStore:
    """The store with every call timed (``search``'s last duration kept apart, to split a
    recall into its parts; the others summed per method, to split a write)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last_s = 0.0
        self.calls: dict[str, list[float]] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await attr(*args, **kwargs)
            finally:
                self.calls.setdefault(name, []).append(time.perf_counter() - t)

        return timed

    async def search(self, *args: Any, **kwargs: Any) -> list[MemoryRecord]:
        t = time.perf_counter()
        try:
            return await self.inner.search(*args, **kwargs)  # type: ignore[no-any-return]
        finally:
            self.last_s = time.perf_counter() - t


def make_store(kind: str, path: Path) -> Any:
    if kind == "edge":
        return EdgeStore(path / "edge", DIM)
    return QdrantServerStore(":memory:", None, "bench", DIM)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def unit_vectors(rng: np.random.Generator, n: int) -> list[list[float]]:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()  # type: ignore[no-any-return]


# -- the phases -----------------------------------------------------------------


def user_points(
    scope: Scope, count: int, u: int, gen: TextGen, bm25: Bm25Encoder,
    rng: np.random.Generator, written_at: int,
) -> list[StoredPoint]:  # fmt: skip
    """A user's ``count`` memories as ``Writer.write`` (gateway.memory.writes) stores them,
    but with random unit dense vectors in place of the embedder's."""
    texts: set[str] = set()
    dense = iter(unit_vectors(rng, 2 * count))
    points = []
    window: list[str] = []
    for k in range(count):
        text = gen.memory()
        while text in texts:  # one memory per text and user, as the ids make it
            text = gen.memory()
        texts.add(text)
        session, pos = divmod(k, SESSION_LEN)
        if pos == 0:
            window = []
        created = BASE_DATE + timedelta(days=7 * session + u % 7, minutes=pos)
        memory = NewMemory(
            text, created, {}, f"s{session}", "user" if pos % 2 == 0 else "assistant", "chat"
        )
        it = index_texts(memory, window)
        window = [*window, text][-WINDOW:]
        vectors = PointVectors(
            next(dense),
            next(dense),
            bm25.document(it.sparse_text),
            bm25.document(it.sparse_context),
        )
        points.append(StoredPoint(memory_id(scope, text), vectors, memory, written_at + k))
    return points


async def bulk_load(store: Any, n: int, users: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    gen = TextGen(seed)
    bm25 = Bm25Encoder()
    populated = min(n, users)
    written_at = time.time_ns()
    started = time.perf_counter()
    build_s = 0.0
    last_report = started
    for u in range(populated):
        count = n // users + (1 if u < n % users else 0)
        scope = Scope(TENANT, f"user-{u}")
        t = time.perf_counter()
        points = user_points(scope, count, u, gen, bm25, rng, written_at)
        build_s += time.perf_counter() - t
        written_at += count
        await store.upsert(scope, points)
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            done = (u + 1) * (n // populated)
            print(f"    {done:,} points in {last_report - started:.0f} s", flush=True)
    elapsed = time.perf_counter() - started
    return {"points": n, "users_with_memories": populated, "seconds": elapsed,
            "points_per_s": n / elapsed, "build_points_s": build_s}  # fmt: skip


def conversation(query: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hi there, quick question for you"},
        {"role": "assistant", "content": "Of course, go ahead."},
        {"role": "user", "content": query},
    ]


async def recall_bench(
    service: MemoryService, embedder: TimedEmbedder, store: TimedStore, n: int, users: int,
    queries: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    gen = TextGen(seed + 1000)
    populated = min(n, users)
    total, embed, search, other, prompt, hits = [], [], [], [], [], []
    texts: list[str] = []
    for q in range(queries + 10):
        scope = Scope(TENANT, f"user-{rng.randrange(populated)}")
        messages = conversation(gen.query())
        t0 = time.perf_counter()
        query = last_user_text(messages)  # what the chat route embeds
        records = await service.recall(scope, query, TOP_K, -1.0)
        t1 = time.perf_counter()
        inject_memories(messages, format_memories(records))
        t2 = time.perf_counter()
        if q < 10:
            continue  # warm-up
        texts.append(query)
        total.append((t2 - t0) * 1000)
        embed.append(embedder.last_s * 1000)
        search.append(store.last_s * 1000)
        other.append((t1 - t0 - embedder.last_s - store.last_s) * 1000)
        prompt.append((t2 - t1) * 1000)
        hits.append(len(records))
    return {
        "queries": queries,
        "distinct_query_texts": len(set(texts)),
        "recall_ms": pct(total),
        "embed_ms": pct(embed),
        "search_ms": pct(search),
        "other_ms": pct(other),
        "prompt_ms": pct(prompt),
        "embed_share_of_mean": statistics.fmean(embed) / statistics.fmean(total),
        "mean_hits": statistics.fmean(hits),
    }


async def write_bench(
    service: MemoryService, store: TimedStore, embedder: TimedEmbedder, seconds: float,
    concurrency: int, users: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    rng = random.Random(seed)
    gen = TextGen(seed + 2000)
    now = datetime.now(UTC)
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        while time.perf_counter() < stop:
            scope = Scope(TENANT, f"user-{rng.randrange(users)}")
            text = f"{gen.memory()} ({w}-{len(latencies)})"
            t = time.perf_counter()
            await service.write_now(scope, [NewMemory(text, now, {}, None, "user", "chat")])
            latencies.append((time.perf_counter() - t) * 1000)

    store.calls.clear()
    embedder.calls = []
    t = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - t
    parts = {f"store.{name}": xs for name, xs in store.calls.items()}
    parts["embed"] = embedder.calls
    return {"concurrency": concurrency, "writes": len(latencies),
            "writes_per_s": len(latencies) / elapsed, "latency_ms": pct(latencies),
            # per call, ms; calls run concurrently with 8 writers, so they overlap
            "parts_ms": {name: {"calls": len(xs), **pct([x * 1000 for x in xs])}
                         for name, xs in parts.items() if xs}}  # fmt: skip


async def one_case(
    kind: str, n: int, args: argparse.Namespace, embedder_url: str
) -> dict[str, Any]:
    path = Path(tempfile.mkdtemp(prefix=f"mem-{kind}-{n}-", dir=WORK))
    store = make_store(kind, path)
    await store.open()
    metrics = GatewayMetrics(CollectorRegistry())
    outbox = Outbox(path / "outbox.sqlite3")
    outbox.open()
    queries = args.queries if kind == "edge" else min(args.queries, args.server_queries)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            embedder = TimedEmbedder(http, embedder_url, DIM, metrics)

            async def ok() -> None:
                return None

            monitors = [Monitor(name, ok) for name in ("embedder", "vector_store")]
            for m in monitors:
                m.report_success()
            timed = TimedStore(store)
            service = MemoryService(timed, embedder, outbox, metrics, *monitors)  # type: ignore[arg-type]
            print(f"[{kind} {n:,}] bulk loading ...", flush=True)
            load = await bulk_load(store, n, args.users, seed=n)
            if kind == "edge":
                info = store._shard.info()  # reporting only
                load["segments"] = info.segments_count
                load["points_in_store"] = info.points_count
                load["indexed_vectors"] = info.indexed_vectors_count
                load["disk_mib"] = dir_bytes(path) / 2**20
            load["rss_mib_after_load"] = procs.rss_bytes(os.getpid()) / 2**20
            print(f"[{kind} {n:,}] {load['points_per_s']:,.0f} points/s "
                  f"({load['seconds']:.0f} s); recall x{queries} ...", flush=True)  # fmt: skip
            gc.collect()
            recall = await recall_bench(service, embedder, timed, n, args.users, queries, seed=1)
            print(f"[{kind} {n:,}] recall p50 {recall['recall_ms']['p50']:.2f} "
                  f"p95 {recall['recall_ms']['p95']:.2f} ms (embed p50 "
                  f"{recall['embed_ms']['p50']:.2f}, search p50 "
                  f"{recall['search_ms']['p50']:.2f}); writes ...", flush=True)  # fmt: skip
            writes = [
                await write_bench(
                    service, timed, embedder, args.write_seconds, c, args.users, seed=c
                )
                for c in (1, 8)
            ]
            print(f"[{kind} {n:,}] writes/s {writes[0]['writes_per_s']:.0f} / "
                  f"{writes[1]['writes_per_s']:.0f}", flush=True)  # fmt: skip
            rss = procs.rss_bytes(os.getpid()) / 2**20
    finally:
        await store.close()
        outbox.close()
        shutil.rmtree(path, ignore_errors=True)
    return {"store": kind, "memories": n, "load": load, "recall": recall, "writes": writes,
            "rss_mib_after": rss, "loadavg": procs.loadavg()}  # fmt: skip


# -- report ---------------------------------------------------------------------


def _cache_note(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["results"] if "recall" in r and r["store"] == "edge"]
    if not rows:
        return []
    lines = ["", "Query-embedding cache (what a hit could save):", ""]
    for r in rows:
        rc = r["recall"]
        e, t = rc["embed_ms"], rc["recall_ms"]
        lines.append(
            f"* edge {r['memories']:,}: embed p50 {e['p50']:.2f} ms of recall p50 "
            f"{t['p50']:.2f} ms ({100 * e['p50'] / t['p50']:.0f} %), mean share "
            f"{100 * rc['embed_share_of_mean']:.0f} %; a cache with hit rate h saves "
            f"h x {e['mean']:.2f} ms on the mean (h = 10 %: {0.1 * e['mean']:.2f} ms) and "
            f"little at p95 (the tail is still made of misses). Distinct query texts in this run: "
            f"{rc['distinct_query_texts']} of {rc['queries']} (templates over a small "
            "vocabulary: not an estimate of how often real chat messages repeat)."
        )
    return lines


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Memory at scale",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; git {data['git']}"
        f"{' (working tree modified)' if data.get('git_dirty') else ''}; started {m['time']}. "
        f"Load average at start {m['loadavg']}, at end {data.get('loadavg_end')}. "
        f"Benchmark process (store in-process) pinned to CPU {data['cpus']}; embedder "
        f"({data.get('embedder_backend', '?')}, 1 intra-op thread) on CPU "
        f"{data['embedder_cpus']}. {data['users']:,} users.",
        "",
        "Command: `" + data["command"] + "`",
        "",
        "Bulk-loaded memories: synthetic chat-memory texts, stored as the gateway stores them "
        "(ids, dated text + session-window context, real BM25 sparse vectors of both, payloads), "
        "but with **synthetic random unit dense vectors**; query vectors come from the **real "
        "embedder over HTTP**. Recall = `MemoryService.recall` (embed + BM25 of the query + "
        "hybrid search: 4 prefetches of 30, RRF, top 5, `min_score` off) + `format_memories` + "
        "`inject_memories`. `other` = the rest of `recall` (query BM25, metrics). Writes = "
        "`MemoryService.write_now` of one memory (existing-id check, session window, one "
        "embedder call for 2 texts, BM25, upsert). `edge` = Qdrant Edge on disk, never "
        "`optimize()`d (as in the gateway). `server` = `QdrantServerStore` on qdrant-client's "
        "local `:memory:` mode, a pure-Python emulation, **not a Qdrant server**: its numbers "
        "say nothing about a real server. RSS = the whole benchmark process after the case "
        "(it includes Edge's memory-mapped files and memory earlier cases did not give back).",
        "",
        "| store | memories | per user | recall p50 ms | recall p95 ms | recall p99 ms "
        "| embed p50 / p95 | search p50 / p95 | other p50 | prompt p50 | bulk load points/s "
        "| writes/s (1 / 8 writers) | RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        if "skipped" in r:
            lines.append(f"| {r['store']} | {r['memories']:,} | | not run: {r['skipped']} "
                         "| | | | | | | | | |")  # fmt: skip
            continue
        rc = r["recall"]
        w = {x["concurrency"]: x["writes_per_s"] for x in r["writes"]}
        per_user = r["memories"] / r["load"]["users_with_memories"]
        lines.append(
            f"| {r['store']} | {r['memories']:,} | {per_user:g} | {rc['recall_ms']['p50']:.2f} | "
            f"{rc['recall_ms']['p95']:.2f} | {rc['recall_ms']['p99']:.2f} | "
            f"{rc['embed_ms']['p50']:.2f} / {rc['embed_ms']['p95']:.2f} | "
            f"{rc['search_ms']['p50']:.2f} / {rc['search_ms']['p95']:.2f} | "
            f"{rc['other_ms']['p50']:.2f} | {rc['prompt_ms']['p50']:.3f} | "
            f"{r['load']['points_per_s']:,.0f} | {_rate(w.get(1, 0))} / {_rate(w.get(8, 0))} | "
            f"{r['rss_mib_after']:.0f} |"
        )
    lines += ["", "Recalls per row: " + ", ".join(
        f"{r['store']} {r['memories']:,}: {r['recall']['queries']}"
        for r in data["results"] if "recall" in r)]  # fmt: skip
    loads = [r for r in data["results"] if "load" in r]
    if loads:
        lines += ["", "Bulk loads: " + "; ".join(
            f"{r['store']} {r['memories']:,} in {r['load']['seconds']:.0f} s"
            + (f" ({r['load']['segments']} segments, {r['load']['disk_mib']:,.0f} MiB on disk)"
               if "segments" in r["load"] else "")
            for r in loads) + "."]  # fmt: skip
    writes = [r for r in data["results"] if "writes" in r]
    if writes:
        lines += ["", "Where a write's time goes (p50 per call, ms; 1 writer | 8 writers):", ""]
        for r in writes:
            cells = []
            for w in r["writes"]:
                parts = ", ".join(f"{k} {v['p50']:.2f}" for k, v in w["parts_ms"].items())
                cells.append(f"write {w['latency_ms']['p50']:.1f} = {parts}")
            lines.append(f"* {r['store']} {r['memories']:,}: " + " | ".join(cells))
    return "\n".join(lines + _cache_note(data)) + "\n"


# -- driver ---------------------------------------------------------------------


def projected_load_s(data: dict[str, Any], kind: str, n: int) -> float | None:
    """From the largest load of ``kind`` so far: n / its points/s."""
    done = [r for r in data["results"] if r["store"] == kind and "load" in r]
    if not done:
        return None
    biggest = max(done, key=lambda r: r["memories"])
    return n / biggest["load"]["points_per_s"]


async def run(args: argparse.Namespace, embedder_url: str, data: dict[str, Any]) -> None:
    for kind in args.stores.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            skip = None
            if kind == "server" and n > args.server_max:
                skip = (f"local mode is capped at {args.server_max:,} memories "
                        "(brute force in Python; not a real server)")  # fmt: skip
            projected = projected_load_s(data, kind, n)
            if skip is None and projected is not None and projected > args.max_load_s:
                skip = (f"bulk load projected at {projected / 60:.0f} min from the measured "
                        f"rate, over the --max-load-s {args.max_load_s:.0f} s budget")  # fmt: skip
            if skip:
                print(f"[{kind} {n:,}] skipped: {skip}", flush=True)
                data["results"].append({"store": kind, "memories": n, "skipped": skip})
                continue
            result = await one_case(kind, n, args, embedder_url)
            data["results"].append(result)
            procs.write_json(args.out, data)  # partial results survive a timeout


def embedder_backend() -> str:
    """The backend the embedder picks with this environment (it inherits ours)."""
    from embedder.model import choose_backend
    from embedder.settings import EmbedderSettings

    backend = choose_backend(EmbedderSettings())
    return {"onnx": "ONNX Runtime", "torch": "sentence-transformers/torch"}.get(backend, backend)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,100000,1000000")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--stores", default="edge,server")
    p.add_argument("--server-max", type=int, default=100_000)
    p.add_argument("--server-queries", type=int, default=20)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--write-seconds", type=float, default=5.0)
    p.add_argument("--max-load-s", type=float, default=1800.0,
                   help="skip a size whose bulk load, projected from a smaller one, exceeds this")  # fmt: skip
    p.add_argument("--cpus", default="0")
    p.add_argument("--embedder-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "memory_scale.json")
    args = p.parse_args()
    if args.cpus:
        procs.pin_self(args.cpus, "bench.memory_scale")
    procs.exit_on_sigterm()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    data: dict[str, Any] = {
        "command": ".venv/bin/python -m bench.memory_scale " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "git_dirty": bool(dirty),
        "cpus": args.cpus,
        "embedder_cpus": args.embedder_cpus,
        "users": args.users,
        "results": [],
    }
    run_dir = Path(tempfile.mkdtemp(prefix="memscale-", dir=WORK))
    embedder = procs.start_embedder(run_dir / "logs", args.embedder_cpus, EMBEDDER_THREADS="1")
    data["embedder_backend"] = embedder_backend()
    try:
        asyncio.run(run(args, embedder.base_url + "/v1", data))
    finally:
        embedder.terminate()
        procs.save_results(args.out, data, markdown)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
