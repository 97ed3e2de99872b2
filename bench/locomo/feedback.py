"""Knobs of the gateway's layout as it is, and what could lift it (issue 18).

    .venv/bin/python -m bench.locomo.feedback /work/shared/data/locomo-dev/*.json

Offline, with the embedder's int8 ONNX vectors and the gateway's exact layout
(``bench/locomo/compose.py``'s ``raw+words``: the memory's text as sent, a
word-weighted composed window with the memory counted ``own`` times, BM25 of
the dated text and of the window, 4 prefetches, RRF), R@10 for:

- ``grid``: the memory's weight in its window (1, 1.5, 2), prefetch limit
  (20, 30, 50) and RRF k (1, 2, 4);
- ``cap``: at most N results from one session in the top 10 (session
  diversity, for multi-hop questions whose evidence spans sessions);
- ``prf``: pseudo-relevance feedback (Rocchio): the dense query moved toward
  the mean window vector of the first search's top ``m`` results
  (``q + beta * mean``), then searched again; no encoder work, one more search.

Each row: R@10 over all questions, per conversation, "tune on two / test on
the third" for the three splits, and per category. Vectors are cached under
``bench/.work/locomo-int8.pkl`` (one encode of every turn and question).
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.locomo import sim
from bench.locomo.compose import Study, summary, unit
from bench.locomo.data import CATEGORIES, load_conversations

_ROOT = Path(__file__).resolve().parents[2]
Rows = list[list[tuple[int, float]]]


class Layout:
    def __init__(self, paths: list[str]) -> None:
        self.convs = load_conversations(paths)
        self.study = Study(self.convs)
        cache = _ROOT / "bench" / ".work" / "locomo-int8.pkl"
        if cache.exists():
            self.vec = pickle.loads(cache.read_bytes())
        else:
            from embedder.model import load_encoder
            from embedder.settings import EmbedderSettings

            enc = load_encoder(EmbedderSettings(threads=1))
            self.vec = {
                "raw": [enc.encode(t).vectors for t in self.study.texts["raw"]],
                "q": [enc.encode(q).vectors for q in self.study.queries],
            }
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(pickle.dumps(self.vec))

    def window(self, ci: int, own: float) -> np.ndarray:
        vecs, mems = self.vec["raw"][ci], self.convs[ci].memories
        out = np.zeros_like(vecs)
        for i, w in enumerate(self.study.wins[ci]):
            ws = np.array([max(1, len(mems[j].text.split())) for j in w], float)
            ws[-1] *= own
            out[i] = (ws[:, None] * vecs[w]).sum(0)
        return unit(out)

    def fused(self, ci: int, q: np.ndarray, ctx: np.ndarray, limit: int, k: float) -> np.ndarray:
        lists = [
            (q @ self.vec["raw"][ci].T, False),
            (q @ ctx.T, False),
            (self.study.bm25_t[ci], True),
            (self.study.bm25_w[ci], True),
        ]
        ranks = [sim.ranks(s, (s > 0) if sparse else None, limit) for s, sparse in lists]
        return sim.rrf(ranks, k=k)

    def run(self, top10: Callable[[int], np.ndarray | list[list[int]]]) -> Rows:
        per = []
        for ci, conv in enumerate(self.convs):
            ids = [m.dia_id for m in conv.memories]
            rows = []
            for qi, q in enumerate(conv.questions):
                found = {ids[j] for j in top10(ci)[qi] if j >= 0}
                rows.append((q.category, len(set(q.evidence) & found) / len(q.evidence)))
            per.append(rows)
        return per

    def plain(self, own: float = 2.0, limit: int = 30, k: float = 2.0) -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.fused(ci, self.vec["q"][ci], self.window(ci, own), limit, k)
            return sim.topk(f, 10, f > 0)

        return self.run(_cached(top))

    def capped(self, cap: int, own: float = 2.0) -> Rows:
        def top(ci: int) -> list[list[int]]:
            f = self.fused(ci, self.vec["q"][ci], self.window(ci, own), 30, 2.0)
            sessions = [m.session_id for m in self.convs[ci].memories]
            out = []
            for row in sim.topk(f, 30, f > 0):
                picked: list[int] = []
                rest: list[int] = []
                for j in (int(x) for x in row if x >= 0):
                    same = sum(sessions[p] == sessions[j] for p in picked)
                    (rest if same >= cap else picked).append(j)
                out.append((picked + rest)[:10])
            return out

        return self.run(_cached(top))

    def feedback(self, m: int, beta: float, own: float) -> Rows:
        def top(ci: int) -> np.ndarray:
            q, ctx = self.vec["q"][ci], self.window(ci, own)
            first = sim.topk(self.fused(ci, q, ctx, 30, 2.0), m, None)
            q2 = unit(q + beta * np.stack([ctx[row[row >= 0]].mean(0) for row in first]))
            f = self.fused(ci, q2, ctx, 30, 2.0)
            return sim.topk(f, 10, f > 0)

        return self.run(_cached(top))


def _cached(fn: Callable[[int], object]) -> Callable[[int], object]:
    memo: dict[int, object] = {}
    return lambda ci: memo[ci] if ci in memo else memo.setdefault(ci, fn(ci))


def line(label: str, per: Rows, names: list[str]) -> str:
    each = [summary(rows)["all"] for rows in per]
    s = summary([r for rows in per for r in rows])
    split = [
        f"{summary([r for i, rows in enumerate(per) if i != t for r in rows])['all']:.1f} / "
        f"{each[t]:.1f}"
        for t in range(len(per))
    ]
    cats = " | ".join(f"{s[str(c)]:.1f}" for c in CATEGORIES)
    return f"| {label} | {s['all']:.1f} | " + " | ".join(
        [*(f"{e:.1f}" for e in each), *split, cats]
    ) + " |"  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    lay = Layout(args.paths)
    names = [c.name for c in lay.convs]
    head = ["R@10", *(f"conv {n}" for n in names)]
    head += [f"tune {'+'.join(x for x in names if x != t)} / test {t}" for t in names]
    head += [f"{c} {CATEGORIES[c]}" for c in CATEGORIES]
    print("| variant | " + " | ".join(head) + " |\n" + "|---" * (len(head) + 1) + "|")
    for own in (1.0, 1.5, 2.0):
        for limit in (20, 30, 50):
            for k in (1.0, 2.0, 4.0):
                label = f"own {own:g}, prefetch {limit}, k {k:g}"
                print(line(label, lay.plain(own, limit, k), names), flush=True)
    for cap in (2, 3, 4):
        print(line(f"own 2, at most {cap} per session", lay.capped(cap), names), flush=True)
    for own in (1.0, 2.0):
        for m, beta in ((3, 0.3), (3, 0.6), (3, 1.0), (5, 0.6)):
            label = f"own {own:g}, feedback m {m}, beta {beta:g}"
            print(line(label, lay.feedback(m, beta, own), names), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
