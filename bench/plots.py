"""PNG plots of the committed results (bench/results/*.json) into bench/results/.

    bench/.work/tools-venv/bin/python -m bench.plots

matplotlib lives in the bench tools venv (``pip install matplotlib``), not in
the project's dependencies. Each plot is skipped when its JSON is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def overhead(data: dict[str, Any]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "ladder", "plain"), (axes[1], "ladder_stream", "streaming")):
        for name, r in data["targets"].items():
            steps = r.get(key, {}).get("steps", [])
            if steps:
                ax.plot([s["rate"] for s in steps], [s["p99"] or float("nan") for s in steps],
                        marker="o", label=name)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(100, color="grey", ls=":", lw=1)
        ax.set_xlabel("offered rate (req/s, open loop)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"p99 vs offered rate, {title} (dotted: 100 ms limit)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "overhead_ladder.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(data["targets"])
    rps = [data["targets"][n]["wrk"]["rps"] for n in names]
    sus = [data["targets"][n]["ladder"]["max_sustained_rps"] for n in names]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], rps, width=0.4, label="wrk max (closed loop, 32 conns)")
    ax.bar([i + 0.2 for i in x], sus, width=0.4, label="sustainable open-loop rate")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput on one pinned core (non-streaming)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "overhead_throughput.png", dpi=110)
    plt.close(fig)


def embedder(data: dict[str, Any]) -> None:
    single = [r for r in data["service"] if r["texts_per_request"] == 1]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["concurrency"] for r in single], [r["texts_per_s"] for r in single], marker="o",
            label="service, one text per request")  # fmt: skip
    best = {
        name: max(r.get(f"batched_{bs}_texts_per_s", 0.0) for bs in (64, 32, 8))
        for name, r in data["direct"].items()
        if "error" not in r
    }
    colors = {"onnx": "tab:green", "torch": "tab:orange"}  # axhline skips the colour cycle
    for name, rate in best.items():
        ax.axhline(rate, color=colors.get(name, "tab:red"), ls="--", lw=1,
                   label=f"direct {name}, best batch ({rate:.0f}/s)")  # fmt: skip
    if "onnx" in best:  # the service's default backend: its ceiling
        ax.axhline(0.9 * best["onnx"], color="grey", ls=":", lw=1.5, label="90 % of direct onnx")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("texts/s")
    ax.set_title("Embedder throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "embedder_throughput.png", dpi=110)
    plt.close(fig)


def memory(data: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for store in ("edge", "server"):
        rows = [r for r in data["results"] if r["store"] == store and "recall" in r]
        if not rows:
            continue
        xs = [r["memories"] for r in rows]
        ax.plot(
            xs, [r["recall"]["recall_ms"]["p50"] for r in rows], marker="o", label=f"{store} p50"
        )
        ax.plot(xs, [r["recall"]["recall_ms"]["p95"] for r in rows], marker="s", ls="--",
                label=f"{store} p95")  # fmt: skip
    ax.axhline(25, color="grey", ls=":", lw=1, label="target p95 25 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored memories (10k users)")
    ax.set_ylabel("recall latency (ms): embed + search + prompt")
    ax.set_title("Recall latency vs memories stored")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "memory_scale.png", dpi=110)
    plt.close(fig)


def soak(runs: list[dict[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for data in runs:
        t = [x[0] / 60 for x in data["rss_mib"]]
        memory = "memory on" if data.get("memory", True) else "memory off"
        if data.get("distinct"):
            memory += f" ({data['distinct']} messages repeated)"
        label = (f"{memory}, {data['rate']:g} req/s, {100 * data['stream_share']:.0f} % streams, "
                 f"errors {data['errors']:g}")  # fmt: skip
        ax.plot(t, [x[1] for x in data["rss_mib"]], marker=".", label=label)
    ax.set_xlabel("minutes")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_title("Soak: gateway resident memory")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "soak_rss.png", dpi=110)
    plt.close(fig)


def main() -> None:
    for name, fn in (("overhead.json", overhead), ("embedder.json", embedder),
                     ("memory_scale.json", memory)):  # fmt: skip
        data = load(name)
        if data is not None:
            fn(data)
            print(f"plotted {name}")
    names = ("soak.json", "soak-steady.json", "soak-proxy.json")
    runs = [data for data in map(load, names) if data is not None]
    if runs:
        soak(runs)
        print("plotted the soaks")


if __name__ == "__main__":
    main()
