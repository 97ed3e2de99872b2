"""Run a retrieval pipeline through a real Qdrant Edge shard: recall + search latency.

    .venv/bin/python -m bench.locomo.edge_check /work/shared/data/locomo-dev/*.json \
        --pipeline NAME [--repeat 3]

All conversations go into ONE shard (as in the gateway: one collection, a `user_id`
payload field with a tenant keyword index, every query filtered by it). Dense vectors
come from the embedding cache; BM25 sparse vectors from qdrant_edge.Bm25, with the
Idf modifier on the sparse vector so Qdrant computes IDF. Latency is the wall time
of shard.query() per question (embedding excluded) and, separately, the time to
embed one query with MiniLM on this machine (single query, 1 thread and 2 threads).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import qdrant_edge as qe

from bench.locomo import experiment as X
from bench.locomo.data import load_conversations
from bench.locomo.embed import CachedEmbedder
from bench.locomo.metrics import percentile, summarise


@dataclass
class Spec:
    dense: dict[str, str]  # vector name -> doc variant
    sparse: dict[str, tuple[str, dict]]  # vector name -> (doc variant, Bm25Config kwargs)
    # prefetches: (vector name, query variant, limit, weight)
    prefetch: list[tuple[str, str, int, float]]
    rrf_k: int = 2
    limit: int = 25
    extra: dict = field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "dense": Spec({"turn": "turn"}, {}, [("turn", "q", 25, 1.0)]),
    "bm25": Spec({}, {"bm25": ("turn", {})}, [("bm25", "q", 25, 1.0)]),
    "rrf_k2": Spec(
        {"turn": "turn"},
        {"bm25": ("turn", {})},
        [("turn", "q", 100, 1.0), ("bm25", "q", 100, 1.0)],
        rrf_k=2,
    ),
    "best": Spec(
        {"text": "datepre", "ctx": "dp_w20"},
        {"bm25": ("datepre", {}), "bm25_ctx": ("w20", {})},
        [
            ("text", "q", 100, 1.0),
            ("ctx", "q", 100, 1.0),
            ("bm25", "q", 100, 1.0),
            ("bm25_ctx", "q", 100, 1.0),
        ],
        rrf_k=2,
    ),
    "cheap_lim30": Spec(
        {"text": "datepre"},
        {"bm25": ("datepre", {}), "bm25_ctx": ("w20", {})},
        [("text", "q", 30, 1.0), ("bm25", "q", 30, 1.0), ("bm25_ctx", "q", 30, 1.0)],
        rrf_k=2,
    ),
    "best_lim30": Spec(
        {"text": "datepre", "ctx": "dp_w20"},
        {"bm25": ("datepre", {}), "bm25_ctx": ("w20", {})},
        [
            ("text", "q", 30, 1.0),
            ("ctx", "q", 30, 1.0),
            ("bm25", "q", 30, 1.0),
            ("bm25_ctx", "q", 30, 1.0),
        ],
        rrf_k=2,
    ),
}


def build(spec: Spec, env: X.Env, path: str) -> tuple[qe.EdgeShard, dict]:
    cfg = qe.EdgeConfig(
        vectors={n: qe.EdgeVectorParams(size=384, distance=qe.Distance.Cosine) for n in spec.dense},
        sparse_vectors={
            n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for n in spec.sparse
        },
    )
    shard = qe.EdgeShard.create(path, cfg)
    shard.update(
        qe.UpdateOperation.create_field_index("user_id", qe.KeywordIndexParams(is_tenant=True))
    )
    bm25 = {n: qe.Bm25(qe.Bm25Config(**kw)) for n, (_, kw) in spec.sparse.items()}
    models = {}
    for ci, c in enumerate(env.convs):
        mems = c.conv.memories
        dense = {n: env.doc_dense(v)[ci] for n, v in spec.dense.items()}
        stexts = {n: X._variant(v)(mems) for n, (v, _) in spec.sparse.items()}
        points = []
        for i, m in enumerate(mems):
            vec: dict = {n: dense[n][i].tolist() for n in dense}
            for n in spec.sparse:
                vec[n] = bm25[n].embed_document(stexts[n][i])
            points.append(
                qe.Point(
                    str(uuid.uuid4()),
                    vec,
                    {"user_id": c.conv.name, "dia_id": m.dia_id, "memory": m.text},
                )
            )
        for s in range(0, len(points), 256):
            shard.update(qe.UpdateOperation.upsert_points(points[s : s + 256]))
    models["bm25"] = bm25
    return shard, models


def make_query(spec: Spec, models: dict, user: str, qvecs: dict, qtexts: dict) -> qe.QueryRequest:
    flt = qe.Filter(must=[qe.FieldCondition("user_id", match=qe.MatchValue(user))])

    def q_for(name: str, qv: str):
        if name in spec.sparse:
            return qe.Query.Nearest(models["bm25"][name].embed_query(qtexts[qv]), using=name)
        return qe.Query.Nearest(qvecs[qv], using=name)

    if len(spec.prefetch) == 1:
        name, qv, _, _ = spec.prefetch[0]
        return qe.QueryRequest(
            limit=spec.limit, query=q_for(name, qv), filter=flt, with_payload=["dia_id"]
        )
    pf = [qe.Prefetch(limit=lim, query=q_for(n, qv), filter=flt) for n, qv, lim, _ in spec.prefetch]
    weights = [w for *_, w in spec.prefetch]
    fusion = qe.Fusion.Rrf(
        k=spec.rrf_k, weights=None if all(w == 1.0 for w in weights) else weights
    )
    return qe.QueryRequest(
        limit=spec.limit, query=fusion, prefetches=pf, filter=flt, with_payload=["dia_id"]
    )


def run(
    spec: Spec, env: X.Env, repeat: int = 3, live_embed: bool = False
) -> tuple[dict, list[float]]:
    """With live_embed, each timed query also embeds the question with MiniLM (one
    query, as the gateway's embedder would) and builds its BM25 query vector."""
    tmp = tempfile.mkdtemp(prefix="locomo-edge-", dir=str(X.CACHE_DIR))
    try:
        shard, models = build(spec, env, tmp + "/shard")
        shard.optimize()
        qvs = {qv for _, qv, _, _ in spec.prefetch}
        rows, lat = [], []
        for ci, c in enumerate(env.convs):
            qd = {qv: env.q_dense(qv)[ci] for qv in qvs}
            for qi, q in enumerate(c.conv.questions):
                qtexts = {qv: X.QUERY_VARIANTS[qv](q.question) for qv in qvs}
                qvecs = {qv: qd[qv][qi].tolist() for qv in qvs}
                best = None
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    if live_embed:
                        qvecs = {
                            qv: env.emb.model()
                            .encode([qtexts[qv]], normalize_embeddings=True)[0]
                            .tolist()
                            for qv in qvs
                        }
                    req = make_query(spec, models, c.conv.name, qvecs, qtexts)
                    res = shard.query(req)
                    dt = (time.perf_counter() - t0) * 1000
                    best = res
                    lat.append(dt)
                rows.append((q.category, [p.payload["dia_id"] for p in best], q.evidence))
        shard.close()
        return summarise(rows), lat
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embed_latency(n: int = 50) -> dict[str, float]:
    import torch

    emb = CachedEmbedder()
    m = emb.model()
    out = {}
    for th in (1, 2):
        torch.set_num_threads(th)
        ts = []
        for i in range(n):
            t0 = time.perf_counter()
            m.encode(
                [f"When did Caroline go to the LGBTQ support group number {i}?"],
                normalize_embeddings=True,
            )
            ts.append((time.perf_counter() - t0) * 1000)
        out[f"p50_{th}t"] = percentile(ts, 50)
        out[f"p95_{th}t"] = percentile(ts, 95)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--pipeline", action="append", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--embed-latency", action="store_true")
    ap.add_argument(
        "--live-embed", action="store_true", help="time the query embedding inside each query too"
    )
    args = ap.parse_args(argv)
    env = X.Env(load_conversations(args.paths), CachedEmbedder())
    print(X.HEADER)
    for name in args.pipeline:
        r, lat = run(SPECS[name], env, args.repeat, args.live_embed)
        print(
            X.fmt_row(
                f"edge:{name}",
                "Qdrant Edge",
                r,
                f"p50 {percentile(lat, 50):.2f} / p95 {percentile(lat, 95):.2f} ms",
            ),
            flush=True,
        )
    if args.embed_latency:
        print("query embedding (MiniLM, CPU):", embed_latency(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
