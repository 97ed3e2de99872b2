"""Exact, vectorised re-implementation of the retrieval primitives Qdrant offers, for
fast offline exploration: dense cosine search, BM25 sparse search (qdrant_edge.Bm25
document/query vectors + Qdrant's IDF modifier), RRF / DBSF fusion with prefetch limits.

Every function works on a whole conversation at once: Q questions x N memories.
The winning pipeline is re-run through a real Qdrant Edge shard in edge_check.py.
"""

from __future__ import annotations

import numpy as np
import qdrant_edge as qe
from scipy import sparse


class SparseSpace:
    """BM25 sparse vectors over a shared token space (Qdrant's Modifier.Idf semantics)."""

    def __init__(
        self,
        k: float = 1.2,
        b: float = 0.75,
        avg_len: float = 256.0,
        stemmer: bool = True,
        stopwords: bool = True,
    ) -> None:
        kw: dict = {"k": k, "b": b, "avg_len": avg_len}
        if not stemmer:
            kw["stemmer"] = qe.DisabledStemmer()
        if not stopwords:
            kw["stopwords"] = qe.StopwordsSet(custom=set())
        self.model = qe.Bm25(qe.Bm25Config(**kw))
        self.vocab: dict[int, int] = {}

    def _col(self, tok: int) -> int:
        c = self.vocab.get(tok)
        if c is None:
            c = self.vocab[tok] = len(self.vocab)
        return c

    def doc_vectors(self, texts: list[str]) -> list[qe.SparseVector]:
        return [self.model.embed_document(t) for t in texts]

    def matrix(self, vecs: list[tuple[list[int], list[float]]]) -> sparse.csr_matrix:
        rows, cols, vals = [], [], []
        for r, (idx, val) in enumerate(vecs):
            for i, v in zip(idx, val, strict=True):
                rows.append(r)
                cols.append(self._col(i))
                vals.append(v)
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(vecs), 1 << 20))

    def docs(self, texts: list[str]) -> sparse.csr_matrix:
        return self.matrix([(v.indices, v.values) for v in self.doc_vectors(texts)])

    def queries(self, texts: list[str]) -> sparse.csr_matrix:
        out = []
        for t in texts:
            v = self.model.embed_query(t)
            out.append((v.indices, v.values))
        return self.matrix(out)


def idf(doc_mats: list[sparse.csr_matrix]) -> np.ndarray:
    """Qdrant's IDF: ln(1 + (N - n + 0.5) / (n + 0.5)), over all given documents."""
    n_docs = sum(m.shape[0] for m in doc_mats)
    df = np.zeros(doc_mats[0].shape[1])
    for m in doc_mats:
        df += np.asarray((m > 0).sum(axis=0)).ravel()
    return np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def bm25_scores(q: sparse.csr_matrix, d: sparse.csr_matrix, idf_vec: np.ndarray) -> np.ndarray:
    qw = q.multiply(idf_vec[None, :]).tocsr()
    return np.asarray((qw @ d.T).todense())


def ranks(
    scores: np.ndarray, valid: np.ndarray | None = None, limit: int | None = None
) -> np.ndarray:
    """0-based rank of each column per row; -1 where not retrieved (invalid or past limit)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    r = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    r[rows, order] = np.arange(scores.shape[1])[None, :]
    if valid is not None:
        # invalid items sink below every valid one, so ranks of valid items stay dense
        r = np.where(valid, r, -1)
    if limit is not None:
        r = np.where((r >= 0) & (r < limit), r, -1)
    return r


def rrf(
    rank_mats: list[np.ndarray], k: float = 2.0, weights: list[float] | None = None
) -> np.ndarray:
    """Qdrant RRF: sum_i w_i / (k + rank_i + 1) over the lists an item appears in."""
    weights = weights or [1.0] * len(rank_mats)
    s = np.zeros(rank_mats[0].shape, dtype=np.float64)
    for r, w in zip(rank_mats, weights, strict=True):
        s += np.where(r >= 0, w / (k + r + 1.0), 0.0)
    return s


def dbsf(score_mats: list[np.ndarray], rank_mats: list[np.ndarray], weights=None) -> np.ndarray:
    """Distribution-based score fusion: each list normalised by mean +- 3 std of its
    retrieved scores, then summed (Qdrant's Fusion.Dbsf)."""
    weights = weights or [1.0] * len(score_mats)
    out = np.zeros(score_mats[0].shape)
    for s, r, w in zip(score_mats, rank_mats, weights, strict=True):
        m = r >= 0
        cnt = np.maximum(m.sum(1, keepdims=True), 1)
        mu = np.where(m, s, 0).sum(1, keepdims=True) / cnt
        var = np.where(m, (s - mu) ** 2, 0).sum(1, keepdims=True) / cnt
        sd = np.sqrt(var)
        lo, hi = mu - 3 * sd, mu + 3 * sd
        norm = np.clip((s - lo) / np.maximum(hi - lo, 1e-9), 0, 1)
        out += np.where(m, w * norm, 0)
    return out


def topk(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    s = scores if valid is None else np.where(valid, scores, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def okapi_scores(
    docs: list[str], queries: list[str], k1: float = 1.5, b: float = 0.75, eps: float = 0.25
) -> np.ndarray:
    """rank_bm25's BM25Okapi over lowercase \\w+ tokens (no stopwords, no stemming): the
    plain BM25 behind the issue's 50.5 baseline, kept to reproduce it."""
    import math
    import re

    toks = [re.findall(r"\w+", d.lower()) for d in docs]
    n = len(toks)
    avg = sum(map(len, toks)) / n
    df: dict[str, int] = {}
    for t in toks:
        for w in set(t):
            df[w] = df.get(w, 0) + 1
    idf = {w: math.log(n - c + 0.5) - math.log(c + 0.5) for w, c in df.items()}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {w: v if v >= 0 else floor for w, v in idf.items()}
    tfs = []
    for t in toks:
        c: dict[str, int] = {}
        for w in t:
            c[w] = c.get(w, 0) + 1
        tfs.append(c)
    lens = np.array([len(t) for t in toks], dtype=np.float64)
    out = np.zeros((len(queries), n))
    for qi, q in enumerate(queries):
        for w in re.findall(r"\w+", q.lower()):
            if w not in idf:
                continue
            f = np.array([c.get(w, 0) for c in tfs], dtype=np.float64)
            out[qi] += idf[w] * f * (k1 + 1) / (f + k1 * (1 - b + b * lens / avg))
    return out
