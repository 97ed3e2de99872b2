"""Where a memory-on chat turn's time goes inside the gateway, from its own metrics.

``bench.memory_turns`` (the recall part) takes a snapshot of the gateway's
latency histograms before and after each load and divides the growth of
their sums by the turns served, so each mode gets mean milliseconds per
turn of:

- ``request``: the chat request, first byte in to last byte out;
- ``recall``: embedding the query and searching the store (the service's
  ``memory_recall_duration``);
- ``before_upstream_other``: the rest of the time before the upstream's
  answer (parsing, validation, the prompt, the body for upstream);
- ``upstream``: the LLM call;
- ``after_upstream``: from the upstream's answer to the last byte out: for a
  memory-on turn, the outbox commit the reply waits for.

Means, not percentiles (histograms cannot give exact ones), beside the
gateway's CPU per turn from /proc; the loaded-box caveat of bench/README.md
applies to the wall-clock columns, not to the CPU one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import httpx

CHAT = 'route="/v1/chat/completions"'
# label: (metric name without the memgate_ prefix, a label every counted line must carry)
HISTOGRAMS = {
    "request": ("http_request_duration_seconds", CHAT),
    "overhead": ("gateway_overhead_seconds", CHAT),
    "upstream": ("upstream_request_duration_seconds", ""),
    "recall": ("memory_recall_duration_seconds", ""),
}
COLUMNS = ("request", "recall", "before_upstream_other", "upstream", "after_upstream")


def snapshot(base_url: str) -> dict[str, float]:
    """The sums (seconds) of the histograms above, and the chat requests' count."""
    text = httpx.get(base_url + "/metrics", timeout=10).text
    out = dict.fromkeys([*HISTOGRAMS, "count"], 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0].removeprefix("memgate_")
        for label, (metric, needle) in HISTOGRAMS.items():
            if name == metric + "_sum" and needle in key:
                out[label] += float(value)
        if name == HISTOGRAMS["request"][0] + "_count" and CHAT in key:
            out["count"] += float(value)
    return out


def per_turn(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per turn of each column, between two snapshots."""
    turns = max(1.0, after["count"] - before["count"])
    ms = {k: 1000 * (after[k] - before[k]) / turns for k in HISTOGRAMS}
    return {
        "request": ms["request"],
        "recall": ms["recall"],
        "before_upstream_other": ms["overhead"] - ms["recall"],
        "upstream": ms["upstream"],
        "after_upstream": ms["request"] - ms["overhead"] - ms["upstream"],
    }


def markdown(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """A table of the medians over rounds, memory off and on, with the gateway's CPU."""
    out = [
        "Inside the gateway (mean ms per turn from its histograms, median over rounds; "
        "CPU from /proc, including whatever the turn left to the background):\n",
        "| mode | " + " | ".join(COLUMNS) + " | gateway CPU ms/turn |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for mode in ("off", "on"):
        rows = [r[f"{mode}_breakdown"] for r in rounds if f"{mode}_breakdown" in r]
        if not rows:
            continue
        cells = [f"{statistics.median(row[c] for row in rows):.2f}" for c in COLUMNS]
        cpu = statistics.median(
            1000 * r[f"{mode}_counters"]["gateway_cpu_s"] / max(1, r[mode]["ok"]) for r in rounds
        )
        out.append(f"| {mode} | " + " | ".join(cells) + f" | {cpu:.2f} |")
    return [*out, ""]
