"""Turn-level evidence recall@k and latency percentiles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

KS = (1, 5, 10, 25)


def recall_at_k(ranked: Sequence[str], evidence: Iterable[str], k: int) -> float:
    """Fraction of the evidence turns found among the first k ranked dia_ids."""
    ev = set(evidence)
    if not ev:
        raise ValueError("question without evidence")
    top = set(ranked[:k])
    return len(ev & top) / len(ev)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank-interpolated percentile (numpy's default 'linear')."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarise(
    rows: list[tuple[int, Sequence[str], Sequence[str]]], ks: Sequence[int] = KS
) -> dict[str, dict[int, float]]:
    """rows: (category, ranked dia_ids, evidence). Returns {'all'|cat: {k: recall%}}."""
    groups: dict[str, list[tuple[Sequence[str], Sequence[str]]]] = {"all": []}
    for cat, ranked, ev in rows:
        groups["all"].append((ranked, ev))
        groups.setdefault(str(cat), []).append((ranked, ev))
    out: dict[str, dict[int, float]] = {}
    for g, items in groups.items():
        out[g] = {k: 100.0 * sum(recall_at_k(r, e, k) for r, e in items) / len(items) for k in ks}
        out[g][0] = len(items)  # type: ignore[index]  # count under key 0
    return out
