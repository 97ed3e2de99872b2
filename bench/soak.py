"""Soak: minutes of steady load with memory on and streams mixed in; errors and the gateway's RSS.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 10] [--stream-share 0.5]
        [--no-memory] [--out bench/results/soak.json]

Starts the embedder alone on CPU 1 (with memory on it is the bottleneck: each
turn embeds its query and its reply), and the stand-in upstream, the
gateway (defaults, Qdrant Edge under bench/.work) and bench/loadgen.py (open
loop, at --rate for --minutes) on CPU 0. Every request names a user (20 users, each
seeded with 5 memories) and carries a unique message, so every turn recalls
(embed + search), and stores two new memories (outbox, embed, upsert): the
memory store grows for the whole run. --stream-share of the requests stream.

Counted as errors: any non-200 answer or transport failure seen by the
generator, any upstream outcome other than success in the gateway's own
metrics (e.g. a stream cut off or ended with an error event), outbox entries
dead, degraded recalls and embedder client errors. The target is zero; memory
writes still queued a minute after the load stops are reported beside them
(queued writes are durable, not lost, but a backlog that does not drain means
the rate is above what the embedder sustains). The gateway's RSS (from /proc)
is sampled every 10 s, and the size of the store on disk (Qdrant Edge's
segments, which it maps into memory) is reported at the end.

``--no-memory`` leaves the user out of every request: the gateway only proxies,
so its RSS shows the proxy path alone under streaming (where a proxy in this
class is known to leak), at rates the embedder could not carry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import overhead, procs
from bench.procs import WORK
from harness.process import ROOT, Service, pinned


def metrics(gateway: Service) -> dict[str, float]:
    text = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) == 2 and parts[0].startswith(("memgate_", "gateway_")):
            with contextlib.suppress(ValueError):
                out[parts[0]] = float(parts[1])
    return out


def select(m: dict[str, float], name: str, *needles: str) -> float:
    """Sum of the series of one metric (``name`` or ``name_total``) whose labels hold ``needles``."""
    return sum(
        v for k, v in m.items()
        if k.split("{", 1)[0] in (name, name + "_total") and all(n in k for n in needles)
    )  # fmt: skip


def write_bodies(
    path: Path,
    n: int,
    stream_share: float,
    memory: bool = True,
    distinct: int | None = None,
    seed: int = 3,
) -> Path:
    """``n`` request bodies; with ``distinct``, the first ``distinct`` of them over and over."""
    rng = random.Random(seed)
    lines: list[str] = []
    topics = ["cooking", "travel", "books", "work", "fitness", "music", "pets", "gardening"]
    for i in range(min(n, distinct or n)):
        body: dict[str, Any] = {
            "model": overhead.MODEL,
            "user": f"bench-user-{i % overhead.USERS}",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {
                    "role": "user",
                    "content": f"Soak message {i}: tell me about "
                    f"{rng.choice(topics)} and {rng.choice(topics)} ({rng.random():.9f})",
                },
            ],
            "max_tokens": 64,
        }
        if not memory:
            del body["user"]
        if rng.random() < stream_share:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        lines.append(json.dumps(body) + "\n")
    with path.open("w") as f:
        f.writelines(lines[i % len(lines)] for i in range(n))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--stream-share", type=float, default=0.5)
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--gen-cpus", default="0")
    p.add_argument("--embedder-cpus", default="1")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--distinct", type=int, default=None,
                   help="repeat this many distinct messages, so the store stops growing")  # fmt: skip
    p.add_argument("--out", type=Path, default=procs.RESULTS / "soak.json")
    args = p.parse_args()
    procs.exit_on_sigterm()
    run_dir = Path(tempfile.mkdtemp(prefix="soak-", dir=WORK))
    logs = run_dir / "logs"
    seconds = args.minutes * 60
    n_bodies = int(seconds * args.rate) + 1000
    memory = not args.no_memory
    bodies = write_bodies(
        run_dir / "bodies.jsonl", n_bodies, args.stream_share, memory, args.distinct
    )
    data: dict[str, Any] = {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "rate": args.rate,
        "minutes": args.minutes,
        "stream_share": args.stream_share,
        "memory": memory,
        "distinct": args.distinct,
    }
    started: list[Service] = []
    try:
        llm = procs.start_fake_llm(logs, args.gen_cpus)
        embedder = procs.start_embedder(logs, args.embedder_cpus)
        started += [llm, embedder]
        gw = procs.start_gateway(logs, run_dir / "data", llm.base_url + "/v1",
                                 embedder.base_url + "/v1", args.proxy_cpus)  # fmt: skip
        started.append(gw)
        if memory:
            overhead.seed_memories(gw)
        before = metrics(gw)
        rss: list[tuple[float, float]] = [(0.0, procs.rss_bytes(gw.pid) / 2**20)]
        data["rss_mib_start"] = rss[0][1]
        argv = [procs.tools_python(), "-m", "bench.loadgen",
                "--url", gw.base_url + "/v1/chat/completions", "--body-file", str(bodies),
                "--rate", str(args.rate), "--duration", str(seconds), "--warmup", "0",
                "--timeout", "60"]  # fmt: skip
        t0 = time.monotonic()
        gen = subprocess.Popen(
            pinned(args.gen_cpus, argv), stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        next_sample = 10.0
        while gen.poll() is None:
            time.sleep(0.5)
            if time.monotonic() - t0 >= next_sample:
                rss.append((time.monotonic() - t0, procs.rss_bytes(gw.pid) / 2**20))
                print(f"  t={rss[-1][0]:5.0f}s rss {rss[-1][1]:.1f} MiB load {procs.loadavg()[0]}",
                      flush=True)  # fmt: skip
                next_sample += 10.0
        out, _ = gen.communicate()
        load = json.loads(out.strip().splitlines()[-1])
        # let the background memory writes of the last turns finish
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = metrics(gw)
            if select(m, "memgate_outbox_depth") == 0:
                break
            time.sleep(1)
        after = metrics(gw)
        rss.append((time.monotonic() - t0, procs.rss_bytes(gw.pid) / 2**20))
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        upstream_bad = select(delta, "memgate_upstream_requests") - select(
            delta, "memgate_upstream_requests", 'outcome="success"'
        )
        checks = {
            "generator_errors": load["error_count"],
            "upstream_outcomes_not_success": upstream_bad,
            "recalls_degraded": select(delta, "memgate_memory_recalls", "degraded"),
            "embedder_client_errors": select(delta, "memgate_embedder_client_errors"),
            "outbox_dead": select(delta, "memgate_outbox_replays", '"dead"'),
        }
        recalls = select(delta, "memgate_memory_recall_duration_seconds_count")
        data.update(
            loadgen=load,
            checks=checks,
            errors=sum(checks.values()),
            writes_pending_at_end=select(after, "memgate_outbox_depth"),
            recall_mean_ms=1000
            * select(delta, "memgate_memory_recall_duration_seconds_sum")
            / max(recalls, 1),
            memories_stored=select(delta, "memgate_memory_writes", 'outcome="stored"'),
            rss_mib=rss,
            rss_mib_end=rss[-1][1],
            store_mib_end=sum(
                f.stat().st_size for f in (run_dir / "data").rglob("*") if f.is_file()
            )
            / 2**20,
            http_2xx=select(delta, "memgate_http_requests", 'status="200"'),
        )
    finally:
        for proc in reversed(started):
            proc.terminate()
    procs.save_results(args.out, data, markdown)


def markdown(data: dict[str, Any]) -> str:
    lat = data["loadgen"]["latency_ms"]
    store = data.get("store_mib_end")
    repeats = ""
    if data.get("distinct"):
        first_pass_s = data["distinct"] / data["rate"]
        after = next((mib for t, mib in data["rss_mib"] if t >= first_pass_s), data["rss_mib_end"])
        repeats = (
            f"Messages: {data['distinct']} distinct, repeated, so the store stops growing "
            f"after {first_pass_s:g} s. Gateway RSS after that first pass {after:.1f} MiB, "
            f"at the end {data['rss_mib_end']:.1f} MiB.\n\n"
        )
    return (
        "# Soak\n\n"
        f"Machine: {data['machine']['nproc']} x {data['machine']['cpu_model']}, load average at start "
        f"{data['machine']['loadavg']}, at end {data['loadavg_end']}. Command: `{data['command']}`\n\n"
        "| memory | minutes | rate/s | streams | requests ok | errors | memories stored | writes "
        "pending at end | latency p50 / p99 ms | recall mean ms | gateway RSS start → end MiB "
        "| data dir at end MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {'on' if data.get('memory', True) else 'off'} | {data['minutes']:g} | {data['rate']:g} "
        f"| {100 * data['stream_share']:.0f} % | {data['loadgen']['ok']} "
        f"| {data['errors']:g} | {data['memories_stored']:g} | {data['writes_pending_at_end']:g} "
        f"| {lat['p50']:.1f} / {lat['p99']:.1f} | {data['recall_mean_ms']:.1f} "
        f"| {data['rss_mib_start']:.1f} → {data['rss_mib_end']:.1f} "
        f"| {'n/a' if store is None else f'{store:.1f}'} |\n\n"
        f"{repeats}"
        f"Error checks: `{json.dumps(data['checks'])}`\n"
    )


if __name__ == "__main__":
    main()
