"""Offline LoCoMo retrieval experiments (phase 1 of issue 8).

    .venv/bin/python -m bench.locomo.experiment /work/shared/data/locomo-dev/*.json \
        [--only NAME[,NAME]] [--out bench/.work/locomo/results.json]

Builds the memories exactly as the memory API receives them (bench.locomo.data),
embeds every text once with all-MiniLM-L6-v2 (cached under bench/.work/), and scores
each pipeline with turn-level evidence recall@1/5/10/25 over the questions of
categories 1-4 that have evidence. Pipelines are compositions of what Qdrant does
natively (dense/sparse search, prefetch limits, RRF/DBSF fusion), re-implemented
exactly in numpy (sim.py) so dozens of variants run in seconds; edge_check.py runs
the chosen one through a real Qdrant Edge shard and measures latency.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.locomo import sim
from bench.locomo.data import Conversation, Memory, load_conversations
from bench.locomo.embed import CACHE_DIR, CachedEmbedder
from bench.locomo.metrics import summarise

# ---------------------------------------------------------------- text variants


def date_str(m: Memory) -> str:
    return f"{m.timestamp.day} {m.timestamp:%B %Y}"


def _session_groups(mems: list[Memory]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(mems):
        groups.setdefault(m.session_id, []).append(i)
    return groups


def window_texts(
    mems: list[Memory], before: int, after: int, base: Callable[[Memory], str], sep: str = " "
) -> list[str]:
    """The turn with `before` previous and `after` next turns of the same session."""
    out = [""] * len(mems)
    for idxs in _session_groups(mems).values():
        for pos, i in enumerate(idxs):
            lo, hi = max(0, pos - before), min(len(idxs), pos + after + 1)
            out[i] = sep.join(base(mems[j]) for j in idxs[lo:hi])
    return out


DOC_VARIANTS: dict[str, Callable[[list[Memory]], list[str]]] = {
    "turn": lambda ms: [m.text for m in ms],
    "raw": lambda ms: [m.raw_text + (f" [shares {m.caption}]" if m.caption else "") for m in ms],
    "date": lambda ms: [f"{m.text} ({date_str(m)})" for m in ms],
    "datepre": lambda ms: [f"On {date_str(m)}, {m.text}" for m in ms],
}


def _variant(name: str) -> Callable[[list[Memory]], list[str]]:
    """'w<b><a>': the turn with b previous and a next turns of its session;
    'dp_<v>': variant v prefixed with "On <date>, "."""
    if name in DOC_VARIANTS:
        return DOC_VARIANTS[name]
    if name.startswith("dp_"):
        inner = _variant(name[3:])
        return lambda ms: [f"On {date_str(m)}, {t}" for m, t in zip(ms, inner(ms), strict=True)]
    m = re.fullmatch(r"w(\d)(\d)", name)
    if m:
        b, a = int(m.group(1)), int(m.group(2))
        return lambda ms: window_texts(ms, b, a, lambda x: x.text)
    raise KeyError(name)


class _Variants(dict):
    def __missing__(self, key: str):
        return _variant(key)


DOC_VARIANTS = _Variants(DOC_VARIANTS)

# ---------------------------------------------------------------- query variants

_LEAD = re.compile(
    r"^\s*(when|what|where|who|whom|which|why|how( many| much| long| often)?|"
    r"did|does|do|is|was|were|are|has|have|had|would|could|can|will)\b\s*",
    re.I,
)
_AUX = re.compile(r"^\s*(did|does|do|is|was|were|are|has|have|had|would|could|can|will)\b\s*", re.I)


def strip_question(q: str) -> str:
    q2 = _LEAD.sub("", q, count=1)
    q2 = _AUX.sub("", q2, count=1)
    return q2.rstrip("?").strip() or q


TIME_WORDS = "yesterday last week last weekend last month last year ago recently today"


def time_expand(q: str) -> str:
    if re.match(r"^\s*(when|how long|in which (year|month))\b", q, re.I):
        return f"{q} {TIME_WORDS}"
    return q


QUERY_VARIANTS: dict[str, Callable[[str], str]] = {
    "q": lambda q: q,
    "strip": strip_question,
    "time": time_expand,
}

# ---------------------------------------------------------------- environment


@dataclass
class ConvData:
    conv: Conversation
    evidence: list[list[str]]
    cats: list[int]


class Env:
    def __init__(self, convs: list[Conversation], embedder: CachedEmbedder) -> None:
        self.convs = [
            ConvData(c, [q.evidence for q in c.questions], [q.category for q in c.questions])
            for c in convs
        ]
        self.emb = embedder
        self._dense: dict[str, list[np.ndarray]] = {}
        self._qdense: dict[str, list[np.ndarray]] = {}
        self._sparse: dict[tuple, tuple[list, np.ndarray, sim.SparseSpace]] = {}

    # dense ------------------------------------------------------------------
    def doc_dense(self, variant: str) -> list[np.ndarray]:
        if variant not in self._dense and variant.startswith(("vmean", "sess")):
            self._dense[variant] = [self._derived(variant, ci) for ci in range(len(self.convs))]
        if variant not in self._dense:
            self._dense[variant] = [
                self.emb.embed(_variant(variant)(c.conv.memories)) for c in self.convs
            ]
            self.emb.save()
        return self._dense[variant]

    def _derived(self, variant: str, ci: int) -> np.ndarray:
        """Vectors computed from other vectors, without another embedding:
        'vmean<b>_<decay>:<base>' = normalised weighted mean of the base vectors of the turn
        and its b previous turns (weight decay**distance);
        'sessprefix:<base>' = mean of the base vectors of the session up to the turn;
        'sessfull:<base>' = mean over the whole session (needs rewrites: not causal)."""
        kind, base = variant.split(":", 1)
        vecs = self.doc_dense(base)[ci]
        mems = self.convs[ci].conv.memories
        out = np.zeros_like(vecs)
        groups = _session_groups(mems)
        for idxs in groups.values():
            for pos, i in enumerate(idxs):
                if kind.startswith("vmean"):
                    b, decay = kind[5:].split("_")
                    acc = np.zeros(vecs.shape[1])
                    for d in range(int(b) + 1):
                        if pos - d >= 0:
                            acc += float(decay) ** d * vecs[idxs[pos - d]]
                elif kind == "sessprefix":
                    acc = vecs[idxs[: pos + 1]].mean(0)
                elif kind == "sessfull":
                    acc = vecs[idxs].mean(0)
                else:
                    raise KeyError(variant)
                out[i] = acc / np.linalg.norm(acc)
        return out

    def q_dense(self, qv: str = "q") -> list[np.ndarray]:
        if qv not in self._qdense:
            self._qdense[qv] = [
                self.emb.embed([QUERY_VARIANTS[qv](q.question) for q in c.conv.questions])
                for c in self.convs
            ]
            self.emb.save()
        return self._qdense[qv]

    def dense(self, variant: str = "turn", qv: str = "q") -> list[np.ndarray]:
        return [q @ d.T for q, d in zip(self.q_dense(qv), self.doc_dense(variant), strict=True)]

    # sparse -----------------------------------------------------------------
    def _sparse_docs(self, variant: str, cfg: tuple) -> tuple[list, np.ndarray, sim.SparseSpace]:
        key = (variant, cfg)
        if key not in self._sparse:
            space = sim.SparseSpace(**dict(cfg))
            mats = [space.docs(_variant(variant)(c.conv.memories)) for c in self.convs]
            self._sparse[key] = (mats, sim.idf(mats), space)
        return self._sparse[key]

    def bm25(self, variant: str = "turn", qv: str = "q", **cfg) -> list[np.ndarray]:
        cfg_t = tuple(sorted(cfg.items()))
        mats, idf, space = self._sparse_docs(variant, cfg_t)
        out = []
        for c, d in zip(self.convs, mats, strict=True):
            q = space.queries([QUERY_VARIANTS[qv](x.question) for x in c.conv.questions])
            out.append(sim.bm25_scores(q, d, idf))
        return out

    # evaluation --------------------------------------------------------------
    def evaluate(self, ranked_idx: list[np.ndarray]) -> dict:
        rows = []
        for c, top in zip(self.convs, ranked_idx, strict=True):
            ids = [m.dia_id for m in c.conv.memories]
            for qi in range(top.shape[0]):
                rows.append((c.cats[qi], [ids[j] for j in top[qi]], c.evidence[qi]))
        return summarise(rows)


# ---------------------------------------------------------------- pipelines

Lists = list[np.ndarray]


def top_of(scores: Lists, valid: Lists | None = None, k: int = 25) -> Lists:
    return [
        sim.topk(s, k, None if valid is None else v)
        for s, v in zip(scores, valid or [None] * len(scores), strict=True)
    ]


def fuse_rrf(
    lists: list[tuple[Lists, bool]], k: float = 2.0, weights=None, limit: int = 100
) -> Lists:
    """lists: (scores per conv, is_sparse). Sparse lists only retrieve items with score > 0."""
    out = []
    for ci in range(len(lists[0][0])):
        rms = []
        for scores, is_sparse in lists:
            s = scores[ci]
            rms.append(sim.ranks(s, (s > 0) if is_sparse else None, limit))
        fused = sim.rrf(rms, k=k, weights=weights)
        out.append(sim.topk(fused, 25, fused > 0))
    return out


def fuse_dbsf(lists: list[tuple[Lists, bool]], weights=None, limit: int = 100) -> Lists:
    out = []
    for ci in range(len(lists[0][0])):
        sms, rms = [], []
        for scores, is_sparse in lists:
            s = scores[ci]
            sms.append(s)
            rms.append(sim.ranks(s, (s > 0) if is_sparse else None, limit))
        fused = sim.dbsf(sms, rms, weights)
        out.append(sim.topk(fused, 25, fused > 0))
    return out


def pipelines(env: Env) -> dict[str, tuple[str, Callable[[], Lists]]]:
    """Every measured pipeline, in the order of RESULTS.md (name -> (description, run))."""
    P: dict[str, tuple[str, Callable[[], Lists]]] = {}
    D, B = env.dense, env.bm25

    def add(name: str, desc: str, fn: Callable[..., Lists], *args: Any, **kw: Any) -> None:
        P[name] = (desc, partial(fn, *args, **kw))

    def dense_only(variant: str = "turn", qv: str = "q") -> Lists:
        return top_of(D(variant, qv))

    def bm25_only(variant: str = "turn", **cfg: Any) -> Lists:
        return [sim.topk(s, 25, s > 0) for s in B(variant, **cfg)]

    def rrf2(dv: str = "turn", bv: str = "turn", **kw: Any) -> Lists:
        return fuse_rrf([(D(dv), False), (B(bv), True)], **kw)

    def combo(
        dv_turn: str | None,
        dv_win: str | None,
        bv_turn: str | None,
        bv_win: str | None,
        k: float = 2,
        weights: list[float] | None = None,
        qd: str = "q",
        qb: str = "q",
        limit: int = 100,
        fuse: str = "rrf",
    ) -> Lists:
        lists = [(D(v, qd), False) for v in (dv_turn, dv_win) if v]
        lists += [(B(v, qb), True) for v in (bv_turn, bv_win) if v]
        if fuse == "dbsf":
            return fuse_dbsf(lists, weights=weights, limit=limit)
        return fuse_rrf(lists, k=k, weights=weights, limit=limit)

    def lists(dense: list[str], sparse: list[str]) -> Lists:
        return fuse_rrf([(D(v), False) for v in dense] + [(B(v), True) for v in sparse], k=2)

    # --- step 0: baselines
    add("dense", "dense cosine over the memory text", dense_only)
    add(
        "bm25",
        "BM25 (qdrant_edge.Bm25 defaults: English stopwords + Snowball stemmer, "
        "k 1.2, b 0.75, avg_len 256) + Qdrant IDF modifier",
        bm25_only,
    )

    def okapi() -> Lists:
        return [
            sim.okapi_scores(
                [m.text for m in c.conv.memories], [q.question for q in c.conv.questions]
            )
            for c in env.convs
        ]

    add(
        "bm25_okapi",
        "plain Okapi BM25 (rank_bm25 style: k1 1.5, \\w+ tokens, no stopwords/"
        "stemming), the issue's baseline",
        lambda: top_of(okapi()),
    )
    add(
        "rrf_okapi_k60",
        "RRF(dense, plain Okapi BM25) k=60: the issue's fusion baseline",
        lambda: fuse_rrf([(D(), False), (okapi(), True)], k=60),
    )
    add("rrf", "RRF(dense, bm25) k=60, prefetch 100 each", rrf2, k=60)
    add("rrf_k2", "RRF(dense, bm25) k=2 (Qdrant's default k)", rrf2, k=2)

    # --- step 1: BM25 parameters (qdrant_edge.Bm25Config)
    for al in (8, 16, 24, 32, 64):
        add(f"bm25_avg{al}", f"BM25 avg_len={al}", bm25_only, avg_len=al)
    for k1 in (0.6, 0.9, 1.5, 2.0):
        add(f"bm25_k{k1}", f"BM25 k={k1}, avg_len 24", bm25_only, avg_len=24, k=k1)
    for b in (0.3, 0.5, 1.0):
        add(f"bm25_b{b}", f"BM25 b={b}, avg_len 24", bm25_only, avg_len=24, b=b)
    add("bm25_nostem", "BM25 without stemmer", bm25_only, stemmer=False)
    add("bm25_nostop", "BM25 without stopwords", bm25_only, stopwords=False)

    # --- step 2: fusion parameters for dense + bm25
    for k in (1, 2, 5, 10, 20):
        add(f"rrf_k{k}", f"RRF(dense, bm25) k={k}", rrf2, k=k)
    for w in (0.5, 0.7, 1.5, 2.0):
        add(f"rrf_k2_wd{w}", f"RRF k=2 weights dense {w}, bm25 1", rrf2, k=2, weights=[w, 1.0])
    for lim in (25, 50, 200):
        add(f"rrf_k2_lim{lim}", f"RRF k=2, prefetch limit {lim}", rrf2, k=2, limit=lim)
    add("dbsf", "DBSF(dense, bm25)", lambda: fuse_dbsf([(D(), False), (B(), True)]))

    # --- step 3: date / text variants (same variant for dense and bm25)
    for v in ("raw", "date", "datepre"):
        add(f"dense_{v}", f"dense over doc variant {v}", dense_only, v)
        add(f"bm25_{v}", f"bm25 over doc variant {v}", bm25_only, v)
        add(f"rrf_{v}", f"RRF k=2 dense+bm25 both over {v}", rrf2, v, v, k=2)
    add("rrf_dturn_bdate", "RRF k=2 dense(turn) + bm25(date)", rrf2, "turn", "date", k=2)

    # --- step 4: neighbour windows
    for w in ("w10", "w20", "w30", "w40", "w11", "w21", "w22", "w01", "w31"):
        add(f"dense_{w}", f"dense over window {w} (prev,next)", dense_only, w)
        add(f"bm25_{w}", f"bm25 over window {w}", bm25_only, w)
        add(
            f"rrf4_{w}",
            f"RRF k=2 of dense(turn), dense({w}), bm25(turn), bm25({w})",
            combo,
            "turn",
            w,
            "turn",
            w,
        )
        add(
            f"rrf3d_{w}",
            f"RRF k=2 of dense(turn), dense({w}), bm25(turn)",
            combo,
            "turn",
            w,
            "turn",
            None,
        )

    # --- step 5: combine date prefix + windows, per-list choices
    grid = [
        ("datepre", "w20", "datepre", "w20"),
        ("datepre", "dp_w20", "datepre", "w20"),
        ("datepre", "w21", "datepre", "w21"),
        ("datepre", "dp_w21", "datepre", "w21"),
        ("datepre", "w20", "datepre", "w10"),
        ("datepre", "w21", "datepre", "w10"),
        ("datepre", "w20", "datepre", "w21"),
        ("datepre", "w10", "datepre", "w20"),
        ("turn", "w20", "datepre", "w20"),
        ("datepre", "w20", None, "w20"),
        ("datepre", None, "datepre", "w20"),
    ]
    for g in grid:
        add(
            "c_" + "_".join(x or "-" for x in g),
            f"RRF k=2 of dense({g[0]}), dense({g[1]}), bm25({g[2]}), bm25({g[3]})",
            combo,
            *g,
        )

    # --- step 6: fusion parameters / query variants on the best 4-list layout
    best = ("datepre", "dp_w20", "datepre", "w20")
    for k in (1, 3, 5, 10):
        add(f"best_k{k}", f"best layout, RRF k={k}", combo, *best, k=k)
    for wts in (
        [1, 1, 2, 2],
        [2, 2, 1, 1],
        [1, 2, 1, 2],
        [2, 1, 2, 1],
        [1, 1, 1, 2],
        [1, 1, 2, 1],
        [0.5, 1, 1, 1],
        [1, 0.5, 1, 1],
    ):
        add(
            "best_w" + "-".join(f"{x:g}" for x in wts),
            f"best layout, RRF k=2 weights {wts}",
            combo,
            *best,
            weights=wts,
        )
    for lim in (30, 50):
        add(f"best_lim{lim}", f"best layout, prefetch {lim}", combo, *best, limit=lim)
    add("best_dbsf", "best layout, DBSF", combo, *best, fuse="dbsf")
    add(
        "best_qstrip_dense",
        "best layout, dense query with the question words stripped",
        combo,
        *best,
        qd="strip",
    )
    add(
        "best_qtime_bm25",
        "best layout, bm25 query + time words for when-questions",
        combo,
        *best,
        qb="time",
    )
    add(
        "best_qstrip_both",
        "best layout, stripped query for dense and bm25",
        combo,
        *best,
        qd="strip",
        qb="strip",
    )

    # --- step 7: more lists / wider windows on top of the best layout
    add(
        "best_bm25w30",
        "best layout with the bm25 window widened to 3 previous turns",
        combo,
        "datepre",
        "dp_w20",
        "datepre",
        "w30",
    )
    add(
        "best_dw30",
        "best layout with the dense window widened to 3 previous turns",
        combo,
        "datepre",
        "dp_w30",
        "datepre",
        "w20",
    )
    add(
        "best_plus_dw10",
        "best layout + a 5th list: dense over (previous turn, turn)",
        lists,
        ["datepre", "dp_w20", "w10"],
        ["datepre", "w20"],
    )
    add(
        "best_plus_bw40",
        "best layout + a 5th list: bm25 over 4 previous turns",
        lists,
        ["datepre", "dp_w20"],
        ["datepre", "w20", "w40"],
    )

    # --- step 8: cheaper context vector (no 2nd embedding) and session-level vectors
    for kind in ("vmean2_1", "vmean2_0.5", "vmean1_1", "vmean3_0.7"):
        add(
            f"best_ctx_{kind}",
            f"best layout, dense ctx = {kind} of the datepre vectors "
            "(no extra embedding per write)",
            combo,
            "datepre",
            f"{kind}:datepre",
            "datepre",
            "w20",
        )
    add(
        "best_plus_sessprefix",
        "best layout + 5th list: mean vector of the session so far",
        lists,
        ["datepre", "dp_w20", "sessprefix:datepre"],
        ["datepre", "w20"],
    )
    add(
        "best_plus_sessfull",
        "best layout + 5th list: mean vector of the whole session (not causal)",
        lists,
        ["datepre", "dp_w20", "sessfull:datepre"],
        ["datepre", "w20"],
    )
    return P


def fmt_row(name: str, desc: str, r: dict, lat: str = "") -> str:
    a = r["all"]
    cats = " | ".join(f"{r[c][10]:.1f}" if c in r else "-" for c in ("1", "2", "3", "4"))
    return (
        f"| {name} | {a[1]:.1f} | {a[5]:.1f} | {a[10]:.1f} | {a[25]:.1f} | {cats} | "
        f"{lat} | {desc} |"
    )


HEADER = (
    "| pipeline | R@1 | R@5 | R@10 | R@25 | R@10 c1 multi-hop | R@10 c2 temporal | "
    "R@10 c3 open | R@10 c4 single-hop | latency | description |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def detail_table(results: dict, names: list[str]) -> str:
    """R@1/5/10/25 per category for the named pipelines of a results.json."""
    lab = {
        "all": "all",
        "1": "1 multi-hop",
        "2": "2 temporal",
        "3": "3 open-domain",
        "4": "4 single-hop",
    }
    out = [
        "| pipeline | questions | n | R@1 | R@5 | R@10 | R@25 |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        for g in lab:
            d = results[n]["recall"][g]
            out.append(
                f"| {n if g == 'all' else ''} | {lab[g]} | {int(d['0'])} | {d['1']:.1f} | "
                f"{d['5']:.1f} | {d['10']:.1f} | {d['25']:.1f} |"
            )
    return "\n".join(out)


def per_conversation_table(env: Env, names: list[str]) -> str:
    """R@10 of the named pipelines on each conversation separately (consistency check)."""
    P = pipelines(env)
    out = [
        "| pipeline | "
        + " | ".join(f"conv {c.conv.name} (n={len(c.cats)})" for c in env.convs)
        + " |",
        "|---|" + "---|" * len(env.convs),
    ]
    for n in names:
        top = P[n][1]()
        cells = []
        for ci, c in enumerate(env.convs):
            sub = Env([c.conv], env.emb)
            cells.append(f"{sub.evaluate([top[ci]])['all'][10]:.1f}")
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(CACHE_DIR / "results.json"))
    ap.add_argument(
        "--detail",
        default="",
        help="print per-category tables of these pipelines from --out and exit",
    )
    ap.add_argument(
        "--per-conv", default="", help="print R@10 per conversation of these pipelines and exit"
    )
    args = ap.parse_args(argv)
    if args.detail:
        print(detail_table(json.loads(Path(args.out).read_text()), args.detail.split(",")))
        return 0
    env = Env(load_conversations(args.paths), CachedEmbedder())
    if args.per_conv:
        print(per_conversation_table(env, args.per_conv.split(",")))
        return 0
    n_q = sum(len(c.cats) for c in env.convs)
    print(
        f"{len(env.convs)} conversations, "
        f"{sum(len(c.conv.memories) for c in env.convs)} memories, {n_q} questions",
        file=sys.stderr,
    )
    P = pipelines(env)
    only = [x for x in args.only.split(",") if x]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    print(HEADER)
    for name, (desc, fn) in P.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        r = env.evaluate(fn())
        results[name] = {
            "desc": desc,
            "recall": {g: {str(k): v for k, v in d.items()} for g, d in r.items()},
        }
        print(fmt_row(name, desc, r), f"  <!-- {time.perf_counter() - t0:.1f}s -->", flush=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
