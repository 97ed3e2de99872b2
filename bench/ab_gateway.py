"""A/B the gateway against patched copies of itself, interleaved, on a noisy machine.

    .venv/bin/python -m bench.ab_gateway base=. async-dep=bench/.work/patched/p1 \
        uvloop=bench/.work/patched/p1:bench/.work/fast-site [--rounds 6] [--seconds 4] [--memory]

Each variant is NAME=SRC[:EXTRA_PYTHONPATH]: SRC holds a ``gateway`` package
(``.`` is this checkout), EXTRA_PYTHONPATH is put first on the gateway's path
(e.g. a folder with uvloop + httptools, which uvicorn then picks up). All
variants run at once, each pinned to --proxy-cpus, in front of one stand-in
upstream (and one embedder with --memory); then, round after round, each
variant in turn gets the same short wrk run (closed loop, 8 connections) with
plain and with streaming requests. Interleaving puts every variant through the
same background noise, so the medians over rounds compare fairly even while
other work shares the machine. Reported per variant: requests/s, wrk p50/p99,
and the gateway's CPU time per request (user + system from /proc), which
depends least on the noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import overhead, procs
from bench.procs import WORK
from harness.process import ROOT, Service


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("variants", nargs="+", help="NAME=SRC[:EXTRA_PYTHONPATH]")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--memory", action="store_true", help="requests name a user (memory on)")
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--gen-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "ab_gateway.json")
    args = p.parse_args()
    procs.exit_on_sigterm()
    run_dir = Path(tempfile.mkdtemp(prefix="ab-", dir=WORK))
    logs = run_dir / "logs"
    bodies = overhead.write_bodies(run_dir / "bodies.jsonl", with_user=args.memory)
    started: list[Service] = []
    data: dict[str, Any] = {
        "command": "python -m bench.ab_gateway " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "memory": args.memory,
        "rounds": {},
    }
    try:
        llm = procs.start_fake_llm(logs, args.gen_cpus)
        embedder = procs.start_embedder(logs, args.gen_cpus)
        started += [llm, embedder]
        gateways: dict[str, Service] = {}
        for spec in args.variants:
            name, _, rest = spec.partition("=")
            src, _, extra = rest.partition(":")
            src_path = (ROOT / src).resolve()
            gw = procs.start_gateway(logs, run_dir / f"data-{name}", llm.base_url + "/v1",
                                     embedder.base_url + "/v1", args.proxy_cpus, src=src_path,
                                     extra_path=str((ROOT / extra).resolve()) if extra else None)  # fmt: skip
            started.append(gw)
            gateways[name] = gw
            if args.memory:
                overhead.seed_memories(gw)
            data["rounds"][name] = {"plain": [], "stream": []}
        url = "/v1/chat/completions"
        for gw in gateways.values():  # warm-up
            overhead.wrk(gw.base_url + url, bodies, args.gen_cpus, False, 2, args.connections)
        for r in range(args.rounds):
            for name, gw in gateways.items():
                for kind in ("plain", "stream"):
                    cpu0 = procs.cpu_seconds(gw.pid)
                    w = overhead.wrk(gw.base_url + url, bodies, args.gen_cpus, kind == "stream",
                                     args.seconds, args.connections)  # fmt: skip
                    n = max(1.0, w["rps"] * args.seconds)
                    w["cpu_ms_per_request"] = 1000 * (procs.cpu_seconds(gw.pid) - cpu0) / n
                    w["loadavg"] = procs.loadavg()
                    w.pop("raw", None)
                    data["rounds"][name][kind].append(w)
                    print(f"round {r} {name:>12} {kind:6} {w['rps']:7.0f}/s cpu/req "
                          f"{w['cpu_ms_per_request']:.3f} ms p50 {w['latency_ms'].get('p50', 0):.2f} "
                          f"load {w['loadavg'][0]}", flush=True)  # fmt: skip
    finally:
        for proc in reversed(started):
            proc.terminate()
    data["loadavg_end"] = procs.loadavg()
    summary: dict[str, Any] = {}
    for name, kinds in data["rounds"].items():
        summary[name] = {
            kind: {
                "rps_median": statistics.median(x["rps"] for x in runs),
                "cpu_ms_per_request_median": statistics.median(
                    x["cpu_ms_per_request"] for x in runs
                ),
                "p50_ms_median": statistics.median(x["latency_ms"].get("p50", 0) for x in runs),
                "p99_ms_median": statistics.median(x["latency_ms"].get("p99", 0) for x in runs),
            }
            for kind, runs in kinds.items()
            if runs
        }
    data["summary"] = summary
    procs.write_json(args.out, data)
    base = next(iter(summary))
    lines = [
        "# Gateway A/B (interleaved wrk runs, medians over rounds)",
        "",
        f"Load average at start {data['machine']['loadavg']}, at end {data['loadavg_end']}; "
        f"memory {'on' if args.memory else 'off'}; {args.rounds} rounds x {args.seconds} s, "
        f"{args.connections} connections. Command: `{data['command']}`",
        "",
        "| variant | kind | req/s | vs first | gateway CPU ms/req | vs first | wrk p50 ms | wrk p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, kinds in summary.items():
        for kind, s in kinds.items():
            b = summary[base][kind]
            lines.append(
                f"| {name} | {kind} | {s['rps_median']:.0f} | "
                f"{100 * (s['rps_median'] / b['rps_median'] - 1):+.0f} % | "
                f"{s['cpu_ms_per_request_median']:.3f} | "
                f"{100 * (s['cpu_ms_per_request_median'] / b['cpu_ms_per_request_median'] - 1):+.0f} % | "
                f"{s['p50_ms_median']:.2f} | {s['p99_ms_median']:.2f} |"
            )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
