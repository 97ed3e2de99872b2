"""Cheap in-process re-ranking of the fused candidates (issue 18, recall quality).

    .venv/bin/python -m bench.locomo.rerank /work/shared/data/locomo-dev/*.json

Offline, with the gateway's exact layout as shipped (``bench/locomo/feedback.py``'s
``Layout``: int8 ONNX vectors, text as sent + composed window with the memory
counted twice, BM25 of the dated text and of the window, 4 prefetches of 30,
RRF k=2). Every variant works only on what one search already returns - the
union of the four prefetch lists (at most 120 candidates), their scores, their
stored vectors and payloads - so none costs a second encoder call:

- ``convex``: a convex combination of each list's scores, min-max normalised
  over that list's candidates, instead of RRF (``alpha`` on the two dense
  lists, ``1 - alpha`` on the two BM25 lists); also normalised by the list's
  maximum, or as z-scores;
- ``session``: the cluster hypothesis over sessions: a candidate's fused
  score plus ``gamma`` times the sum of the other candidates' fused scores
  from its session (relevant turns come in runs);
- ``near``: the same, counting only candidates at most ``d`` memories away in
  the session (the neighbouring turns);
- ``convex + near``: both;
- ``mmr``: maximal marginal relevance over the candidates' text vectors;
- ``bm25 k1/b``: Qdrant's BM25 with other saturation / length parameters.

Each row: R@10 over all questions, per conversation, "tune on two / test on
the third" for the three splits, and per category. ``--select`` then picks,
for each split, the best setting of each family on the two tuning
conversations and reports it on the held-out one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np

from bench.locomo import sim
from bench.locomo.compose import Study, summary
from bench.locomo.data import CATEGORIES
from bench.locomo.feedback import Layout, Rows, line

LIMIT, K = 30, 2.0


class Rerank:
    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        self.ctx = [lay.window(ci, 2.0) for ci in range(len(lay.convs))]
        self.sess = []
        self.pos = []
        for conv in lay.convs:
            ids = [m.session_id for m in conv.memories]
            names = {s: i for i, s in enumerate(dict.fromkeys(ids))}
            self.sess.append(np.array([names[s] for s in ids]))
            pos, seen = [], {}
            for s in ids:
                pos.append(seen.get(s, 0))
                seen[s] = pos[-1] + 1
            self.pos.append(np.array(pos))

    def lists(self, ci: int, study: Study | None = None) -> list[tuple[np.ndarray, bool]]:
        st = study or self.lay.study
        q = self.lay.vec["q"][ci]
        return [
            (q @ self.lay.vec["raw"][ci].T, False),
            (q @ self.ctx[ci].T, False),
            (st.bm25_t[ci], True),
            (st.bm25_w[ci], True),
        ]

    def ranks(self, ci: int, study: Study | None = None) -> list[np.ndarray]:
        return [sim.ranks(s, (s > 0) if sp else None, LIMIT) for s, sp in self.lists(ci, study)]

    def rrf(self, ci: int, study: Study | None = None) -> np.ndarray:
        return sim.rrf(self.ranks(ci, study), k=K)

    def run(self, top10: Callable[[int], np.ndarray]) -> Rows:
        memo: dict[int, np.ndarray] = {}

        def cached(ci: int) -> np.ndarray:
            if ci not in memo:
                memo[ci] = top10(ci)
            return memo[ci]

        return self.lay.run(cached)

    # -- variants -------------------------------------------------------------

    def plain(self, study: Study | None = None) -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.rrf(ci, study)
            return sim.topk(f, 10, f > 0)

        return self.run(top)

    def convex_scores(self, ci: int, alpha: float, norm: str = "minmax") -> np.ndarray:
        """Each list's scores normalised over its own candidates (min-max, by its
        maximum, or z-score + 3), weighted ``alpha`` dense / ``1 - alpha`` BM25."""
        rs = self.ranks(ci)
        out = np.zeros(rs[0].shape)
        weights = [alpha / 2, alpha / 2, (1 - alpha) / 2, (1 - alpha) / 2]
        for (s, _), r, w in zip(self.lists(ci), rs, weights, strict=True):
            m = r >= 0
            hi = np.where(m, s, -np.inf).max(1, keepdims=True)
            if norm == "minmax":
                lo = np.where(m, s, np.inf).min(1, keepdims=True)
                v = (s - lo) / np.maximum(hi - lo, 1e-9)
            elif norm == "max":
                v = s / np.maximum(hi, 1e-9)
            else:
                cnt = np.maximum(m.sum(1, keepdims=True), 1)
                mu = np.where(m, s, 0).sum(1, keepdims=True) / cnt
                sd = np.sqrt(np.where(m, (s - mu) ** 2, 0).sum(1, keepdims=True) / cnt)
                v = (s - mu) / np.maximum(sd, 1e-9) + 3
            out += np.where(m, w * v, 0.0)
        cand = np.stack([r >= 0 for r in rs]).any(0)
        return np.where(cand, out + 1e-6, 0.0)  # a candidate always beats a non-candidate

    def convex(self, alpha: float, norm: str = "minmax") -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.convex_scores(ci, alpha, norm)
            return sim.topk(f, 10, f > 0)

        return self.run(top)

    def near_boost(self, ci: int, f: np.ndarray, gamma: float, reach: int | None) -> np.ndarray:
        sess, pos = self.sess[ci], self.pos[ci]
        same = sess[:, None] == sess[None, :]
        if reach is not None:
            same &= np.abs(pos[:, None] - pos[None, :]) <= reach
        np.fill_diagonal(same, False)
        return np.where(f > 0, f + gamma * (f @ same.astype(float)), 0.0)

    def convex_near(self, alpha: float, reach: int, gamma: float) -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.near_boost(ci, self.convex_scores(ci, alpha), gamma, reach)
            return sim.topk(f, 10, f > 0)

        return self.run(top)

    def ceiling(self) -> list[str]:
        """Where the evidence of the weak categories ranks: in the fused top 10,
        in each list's first 30 (the prefetch), in any of them (what a re-ranker
        of these candidates could at best reach)."""
        out = []
        for cat in (1, 3):
            rows = []
            for ci, conv in enumerate(self.lay.convs):
                at = {m.dia_id: i for i, m in enumerate(conv.memories)}
                fused = sim.ranks(self.rrf(ci))
                rs = self.ranks(ci)
                for qi, q in enumerate(conv.questions):
                    for e in q.evidence if q.category == cat else ():
                        if e in at:
                            j = at[e]
                            rows.append([fused[qi, j] < 10, *(r[qi, j] >= 0 for r in rs)])
            a = np.array(rows, dtype=bool)
            out.append(
                f"| {cat} {CATEGORIES[cat]} | {len(a)} | {100 * a[:, 0].mean():.0f} | "
                + " | ".join(f"{100 * a[:, i].mean():.0f}" for i in range(1, 5))
                + f" | {100 * a[:, 1:].any(1).mean():.0f} |"
            )
        return out

    def session(self, gamma: float, reach: int | None = None) -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.rrf(ci)
            return sim.topk(self.near_boost(ci, f, gamma, reach), 10, f > 0)

        return self.run(top)

    def mmr(self, lam: float) -> Rows:
        def top(ci: int) -> np.ndarray:
            f = self.rrf(ci)
            f = f / f.max(1, keepdims=True)
            vecs = self.lay.vec["raw"][ci]
            out = []
            for row in f:
                cand = list(np.flatnonzero(row > 0))
                picked: list[int] = []
                while cand and len(picked) < 10:
                    red = (vecs[cand] @ vecs[picked].T).max(1) if picked else np.zeros(len(cand))
                    best = int(np.argmax(lam * row[cand] - (1 - lam) * red))
                    picked.append(cand.pop(best))
                out.append(picked + [-1] * (10 - len(picked)))
            return np.array(out)

        return self.run(top)

    def bm25(self, k1: float, b: float) -> Rows:
        space = sim.SparseSpace(k=k1, b=b)
        st = Study.__new__(Study)
        st.convs, st.space, st.wins = self.lay.study.convs, space, self.lay.study.wins
        dated = [[f"On {m.timestamp.day} {m.timestamp:%B %Y}, {m.text}" for m in c.memories]
                 for c in st.convs]  # fmt: skip
        wtext = [[" ".join(c.memories[j].text for j in w) for w in ws]
                 for c, ws in zip(st.convs, st.wins, strict=True)]  # fmt: skip
        mats_t = [space.docs(t) for t in dated]
        mats_w = [space.docs(t) for t in wtext]
        idf = sim.idf(mats_t + mats_w)
        qs = [space.queries(q) for q in self.lay.study.queries]
        st.bm25_t = [sim.bm25_scores(q, d, idf) for q, d in zip(qs, mats_t, strict=True)]
        st.bm25_w = [sim.bm25_scores(q, d, idf) for q, d in zip(qs, mats_w, strict=True)]
        return self.plain(st)


def held_out(family: dict[str, Rows]) -> list[tuple[str, float, float]]:
    """For each split: the setting best on the two tuning conversations, its
    tuning R@10 and its R@10 on the held-out one."""
    out = []
    n = len(next(iter(family.values())))
    for t in range(n):

        def tune(per: Rows, t: int = t) -> float:
            return summary([r for i, rows in enumerate(per) if i != t for r in rows])["all"]

        best = max(family, key=lambda name: tune(family[name]))
        out.append((best, tune(family[best]), summary(family[best][t])["all"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args(argv)
    lay = Layout(args.paths)
    rr = Rerank(lay)
    names = [c.name for c in lay.convs]
    head = ["R@10", *(f"conv {n}" for n in names)]
    head += [f"tune {'+'.join(x for x in names if x != t)} / test {t}" for t in names]
    head += [f"{c} {CATEGORIES[c]}" for c in CATEGORIES]
    print("| variant | " + " | ".join(head) + " |\n" + "|---" * (len(head) + 1) + "|")
    base = rr.plain()
    families: dict[str, dict[str, Rows]] = {
        "convex": {
            f"convex alpha {a:g}": rr.convex(a) for a in (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7)
        },
        "convex by max": {
            f"convex by max, alpha {a:g}": rr.convex(a, "max") for a in (0.3, 0.4, 0.5)
        },
        "convex z-score": {f"convex z, alpha {a:g}": rr.convex(a, "z") for a in (0.3, 0.4, 0.5)},
        "session": {f"session gamma {g:g}": rr.session(g) for g in (0.05, 0.1, 0.2, 0.3, 0.5)},
        "near": {
            f"near d {d}, gamma {g:g}": rr.session(g, d)
            for d in (1, 2, 3)
            for g in (0.1, 0.2, 0.3, 0.5)
        },
        "convex + near": {
            f"convex alpha {a:g} + near d {d}, gamma {g:g}": rr.convex_near(a, d, g)
            for a in (0.35, 0.4, 0.45)
            for d in (1, 2)
            for g in (0.05, 0.1, 0.2)
        },
        "mmr": {f"mmr lambda {x:g}": rr.mmr(x) for x in (0.5, 0.7, 0.85)},
        "bm25": {
            f"bm25 k1 {k1:g}, b {b:g}": rr.bm25(k1, b)
            for k1 in (0.9, 1.2, 1.6)
            for b in (0.4, 0.75, 0.9)
        },
    }
    print(line("shipped (RRF k 2, prefetch 30)", base, names), flush=True)
    for fam in families.values():
        for label, per in fam.items():
            print(line(label, per, names), flush=True)
    print("\nHeld out: per split, the setting best on the two tuning conversations\n")
    print(
        "| family | " + " | ".join(f"test {n}: pick, tune / test (shipped)" for n in names) + " |"
    )
    print("|---" * (len(names) + 1) + "|")
    shipped = [summary(rows)["all"] for rows in base]
    for fam_name, fam in families.items():
        cells = [
            f"{pick}, {tu:.1f} / {te:.1f} ({shipped[i]:.1f})"
            for i, (pick, tu, te) in enumerate(held_out(fam))
        ]
        print(f"| {fam_name} | " + " | ".join(cells) + " |")
    print("\nCeiling: % of evidence turns in the fused top 10 / in each list's prefetch 30\n")
    print("| category | evidence turns | fused top 10 | text | ctx | bm25 | bm25_ctx | any |")
    print("|---" * 8 + "|")
    print("\n".join(rr.ceiling()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
