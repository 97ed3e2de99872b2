"""Gateway overhead: the same load against the upstream directly, memgate (memory off/on) and LiteLLM.

    .venv/bin/python -m bench.overhead [--targets direct,memgate-off,memgate-on,litellm]
        [--rates 100,200,500,1000] [--duration 10] [--out bench/results/overhead.json]

Starts, each pinned with ``taskset``:
  * the stand-in upstream (tests/fakes/llm_server.py, raw asyncio) on --gen-cpus,
  * the embedder (torch, 1 thread) on --gen-cpus, for memgate with memory on,
  * the proxy under test alone on --proxy-cpus: memgate (``python -m gateway``,
    defaults, log level warning) or LiteLLM (``litellm --num_workers 1`` from
    bench/.work/litellm-venv, logging off, the stand-in as an ``openai/``
    upstream),
and drives each target with
  * bench/loadgen.py (open loop, fixed rates, latency from the scheduled send
    time, TTFT for streams) at every --rates value, plain and streaming;
  * a rate ladder (open loop, 5 s steps) for the highest sustainable rate: the
    highest step where no request failed, at least 97 % of the offered rate
    completed and p99 stayed under 100 ms;
  * wrk (closed loop, 1 thread, 32 connections, bench/wrk/chat.lua) for the
    maximum throughput.
Targets: direct (the upstream itself), memgate-off (no ``user``: the body goes
upstream byte for byte), memgate-on (``user`` set; every user has 5 stored
memories, so each request embeds its last message, searches Qdrant Edge, adds a
system message and queues two memories to the outbox), litellm.

"Added" latency is a target's percentile minus the direct one at the same rate.
Writes the JSON to --out and a markdown table beside it (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.procs import WORK
from harness.process import ROOT, Service, free_port, pinned, spawn

LITELLM_VENV = WORK / "litellm-venv"
MODEL = "fake-model"
USERS = 20
MESSAGES = [
    "What should I cook tonight?",
    "Remind me what my dog's name is.",
    "Any ideas for a weekend trip?",
    "Which book did I say I was reading?",
    "Help me plan my week.",
    "What's a good gift for my sister?",
    "Suggest a snack I can buy near home.",
    "How do I fix a flat bike tyre?",
    "Recommend a movie for tonight.",
    "What time zone am I in?",
]
SEED_FACTS = [
    "I live in Lisbon and work as a nurse.",
    "My dog is a beagle named Pepper.",
    "I am allergic to peanuts.",
    "I am reading The Left Hand of Darkness.",
    "My sister's birthday is in March and she loves pottery.",
]


def write_bodies(path: Path, with_user: bool) -> Path:
    lines = []
    for u in range(USERS):
        for i, text in enumerate(MESSAGES):
            body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{text} (#{u}-{i})"}],
                "max_tokens": 32,
            }
            if with_user:
                body["user"] = f"bench-user-{u}"
            lines.append(json.dumps(body))
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_memories(gateway: Service) -> None:
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        for u in range(USERS):
            for fact in SEED_FACTS:
                r = client.post("/v1/memories", json={"user_id": f"bench-user-{u}", "text": fact})
                r.raise_for_status()


def start_litellm(log_dir: Path, upstream_url: str, cpus: str) -> Service:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(
            f"{exe} missing: python3 -m venv {LITELLM_VENV} && "
            f"{LITELLM_VENV}/bin/pip install 'litellm[proxy]'"
        )
    config = log_dir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_url}\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  turn_off_message_logging: true\n"
        "  request_timeout: 60\n"
        "general_settings:\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
    )
    port = free_port()
    # No auth on either side: memgate runs without GATEWAY_API_KEYS (loopback), LiteLLM without
    # a master key (it refuses that unless told this is local development).
    env = {
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    argv = [str(exe), "--config", str(config), "--port", str(port), "--host", "127.0.0.1",
            "--num_workers", "1"]  # fmt: skip
    proc = spawn("litellm", argv, port=port, log_dir=log_dir, cpus=cpus, env=env)
    return proc.wait_for("/health/liveliness", 180)


def start_floor(kind: str, log_dir: Path, upstream_url: str, cpus: str) -> Service:
    """A bare proxy (bench/floor/proxies.py): what any Python proxy on this stack costs."""
    port = free_port()
    argv = [procs.PY, "-m", "bench.floor.proxies", kind, str(port), upstream_url]
    proc = spawn(f"floor-{kind}", argv, port=port, log_dir=log_dir, cpus=cpus)
    proc.wait_line("Uvicorn running on", 30)
    return proc


def loadgen(url: str, bodies: Path, rate: float, duration: float, warmup: float,
            stream: bool, cpus: str) -> dict[str, Any]:  # fmt: skip
    argv = [procs.tools_python(), "-m", "bench.loadgen", "--url", url,
            "--body-file", str(bodies), "--rate", str(rate), "--duration", str(duration),
            "--warmup", str(warmup), "--timeout", "20"]  # fmt: skip
    if stream:
        argv.append("--stream")
    load_before = procs.loadavg()
    out = subprocess.run(pinned(cpus, argv), capture_output=True, text=True, check=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["loadavg_before"] = load_before
    return result


def sustainable(r: dict[str, Any]) -> bool:
    p99 = r["latency_ms"]["p99"]
    return (
        r["error_count"] == 0
        and r["ok"] >= 0.97 * r["sent"]
        and r["achieved_rps"] >= 0.97 * r["offered_rps"]
        and p99 is not None
        and p99 <= 100.0
    )


def ladder(url: str, bodies: Path, cpus: str, rates: list[float], stream: bool) -> dict[str, Any]:
    steps = []
    best = 0.0
    for rate in rates:
        r = loadgen(url, bodies, rate, 5.0, 1.0, stream, cpus)
        ok = sustainable(r)
        steps.append({"rate": rate, "sustained": ok, "achieved_rps": r["achieved_rps"],
                      "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                      "errors": r["error_count"]})  # fmt: skip
        print(f"    ladder {rate:>6.0f}/s -> {'ok ' if ok else 'NO '} "
              f"p50 {r['latency_ms']['p50'] or 0:.2f} p99 {r['latency_ms']['p99'] or 0:.2f} ms "
              f"achieved {r['achieved_rps']:.0f}/s errors {r['error_count']}", flush=True)  # fmt: skip
        if not ok:
            break
        best = rate
    return {"max_sustained_rps": best, "steps": steps}


WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
WRK_SOCK = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_PCT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(
    url: str, bodies: Path, cpus: str, stream: bool, seconds: int = 10, conns: int = 32
) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s",
            str(ROOT / "bench" / "wrk" / "chat.lua"), url, "--", str(bodies)]  # fmt: skip
    if stream:
        argv.append("stream")
    out = subprocess.run(pinned(cpus, argv), capture_output=True, text=True, check=True).stdout
    rps = WRK_RPS.search(out)
    non2xx = WRK_NON2XX.search(out)
    sock = WRK_SOCK.search(out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {f"p{p}": float(v) * scale[u] for p, v, u in WRK_PCT.findall(out)}
    return {
        "connections": conns,
        "seconds": seconds,
        "rps": float(rps.group(1)) if rps else 0.0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0],
        "latency_ms": pct,
        "raw": out,
    }


def measure(name: str, url: str, bodies: Path, args: argparse.Namespace,
            proxy: Service | None, server: Service) -> dict[str, Any]:  # fmt: skip
    """``proxy``: the process under test (None for direct); ``server``: whose CPU time is counted
    per request (the proxy, or the upstream for direct)."""
    print(f"== {name}: {url}", flush=True)
    gen = args.gen_cpus
    # warm up connections, caches and the JIT-free interpreter's allocator
    loadgen(url, bodies, min(args.rates), 3.0, 0.0, False, gen)
    result: dict[str, Any] = {"url": url, "fixed": {}, "fixed_stream": {}}
    rss0 = procs.rss_bytes(proxy.pid) if proxy else None
    rates = sorted(args.ladder)
    if args.quick:
        none = {"max_sustained_rps": max(args.rates), "steps": [], "skipped": True}
        result["ladder"], result["ladder_stream"] = none, dict(none)
    else:
        result["ladder"] = ladder(url, bodies, gen, rates, False)
        result["ladder_stream"] = ladder(url, bodies, gen, rates, True)
    cap, cap_s = result["ladder"]["max_sustained_rps"], result["ladder_stream"]["max_sustained_rps"]
    for rate in args.rates:
        for stream, key, limit in ((False, "fixed", cap), (True, "fixed_stream", cap_s)):
            if rate > max(limit, min(args.rates)) and name != "direct" and not args.quick:
                result[key][str(int(rate))] = {
                    "skipped": f"over the sustainable rate ({limit:g}/s)"
                }
                continue
            cpu0 = procs.cpu_seconds(server.pid)
            r = loadgen(url, bodies, rate, args.duration, 2.0, stream, gen)
            sent = r["sent"] + int(2.0 * rate)  # the warm-up requests cost CPU too
            r["server_cpu_ms_per_request"] = (
                1000 * (procs.cpu_seconds(server.pid) - cpu0) / max(1, sent)
            )
            result[key][str(int(rate))] = r
            lat = r["latency_ms"]
            ttft = r["ttft_ms"]["p50"] if r.get("ttft_ms") else None
            print(f"  {rate:>6.0f}/s {'stream' if stream else 'plain '} p50 {lat['p50']:.2f} "
                  f"p95 {lat['p95']:.2f} p99 {lat['p99']:.2f} ms"
                  + (f" ttft p50 {ttft:.2f}" if ttft else "")
                  + f" cpu/req {r['server_cpu_ms_per_request']:.3f} ms"
                  + f" errors {r['error_count']} load {r['loadavg_before'][0]:.2f}", flush=True)  # fmt: skip
    result["wrk"] = wrk(url, bodies, gen, False)
    result["wrk_stream"] = wrk(url, bodies, gen, True)
    print(f"  wrk max {result['wrk']['rps']:.0f}/s (stream {result['wrk_stream']['rps']:.0f}/s) "
          f"non-2xx {result['wrk']['non_2xx']}", flush=True)  # fmt: skip
    if proxy:
        result["rss_mib"] = {"start": rss0 / 2**20, "end": procs.rss_bytes(proxy.pid) / 2**20}
    return result


def added(
    results: dict[str, Any], name: str, key: str, rate: str, field: str, pct: str
) -> float | None:
    try:
        mine = results[name][key][rate][field][pct]
        base = results["direct"][key][rate][field][pct]
    except (KeyError, TypeError):
        return None
    return None if mine is None or base is None else mine - base


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    res = data["targets"]
    m = data["machine"]
    out = [
        "# Gateway overhead",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; load average "
        f"at start {m['loadavg']}, at end {data['loadavg_end']}; git {data['git']}.",
        f"Pinning: proxy on CPU {data['proxy_cpus']}; generator, stand-in upstream and "
        f"embedder on CPU {data['gen_cpus']}. Command: `{data['command']}`",
        "",
        "## Latency at fixed rates (open loop, ms; added = minus direct at the same rate)",
        "",
        "| target | rate/s | kind | p50 | p95 | p99 | added p50 | added p99 | added TTFT p50 | server CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        for key, kind in (("fixed", "plain"), ("fixed_stream", "stream")):
            for rate, x in r.get(key, {}).items():
                if "skipped" in x:
                    out.append(f"| {name} | {rate} | {kind} | {x['skipped']} ||||||||")
                    continue
                lat = x["latency_ms"]
                ttft = added(res, name, key, rate, "ttft_ms", "p50") if kind == "stream" else None
                out.append(
                    f"| {name} | {rate} | {kind} | {fmt(lat['p50'])} | {fmt(lat['p95'])} | "
                    f"{fmt(lat['p99'])} | {fmt(added(res, name, key, rate, 'latency_ms', 'p50'))} | "
                    f"{fmt(added(res, name, key, rate, 'latency_ms', 'p99'))} | {fmt(ttft)} | "
                    f"{fmt(x.get('server_cpu_ms_per_request'), 3)} | {x['error_count']} |"
                )
    out += [
        "",
        "## Throughput",
        "",
        "| target | sustainable open-loop rate (plain / stream) | wrk max req/s, 32 conns (plain / stream) | wrk p50 / p99 ms (plain) | RSS MiB start → end |",
        "|---|---|---|---|---|",
    ]
    for name, r in res.items():
        w, ws = r["wrk"], r["wrk_stream"]
        rss = r.get("rss_mib")
        out.append(
            f"| {name} | {r['ladder']['max_sustained_rps']:g} / {r['ladder_stream']['max_sustained_rps']:g} | "
            f"{w['rps']:.0f} / {ws['rps']:.0f} | {fmt(w['latency_ms'].get('p50'))} / "
            f"{fmt(w['latency_ms'].get('p99'))} | "
            + (f"{rss['start']:.0f} → {rss['end']:.0f}" if rss else "-")
            + " |"
        )
    if "memgate-off" in res and "litellm" in res:
        mg, ll = res["memgate-off"], res["litellm"]
        ratio_wrk = mg["wrk"]["rps"] / max(1e-9, ll["wrk"]["rps"])
        ll_rate = ll["ladder"]["max_sustained_rps"]
        by_ladder = (
            f"{mg['ladder']['max_sustained_rps'] / ll_rate:.1f}x by sustainable open-loop rate"
            if ll_rate
            else "LiteLLM sustained none of the ladder's rates (start it lower for a ratio)"
        )
        out += ["", f"memgate (memory off) / LiteLLM: {ratio_wrk:.1f}x by wrk max throughput; "
                f"{by_ladder}."]  # fmt: skip
    out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", default="direct,memgate-off,memgate-on,litellm")
    p.add_argument("--rates", default="100,200,500,1000")
    p.add_argument("--ladder", default="100,200,300,500,750,1000,1500,2000,3000,4000,6000")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--gen-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "overhead.json")
    p.add_argument(
        "--gateway-src",
        type=Path,
        default=ROOT,
        help="directory holding the gateway package (A/B runs of a patched copy)",
    )
    p.add_argument(
        "--extra-path",
        default=None,
        help="PYTHONPATH entry for the gateway only (e.g. uvloop + httptools)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="only wrk max throughput and the fixed rates (no ladder), for A/B runs",
    )
    args = p.parse_args()
    args.rates = [float(x) for x in args.rates.split(",")]
    args.ladder = [float(x) for x in args.ladder.split(",")]
    targets = args.targets.split(",")
    procs.exit_on_sigterm()
    run_dir = Path(tempfile.mkdtemp(prefix="overhead-", dir=WORK))
    logs = run_dir / "logs"
    data: dict[str, Any] = {
        "command": "python -m bench.overhead " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "proxy_cpus": args.proxy_cpus,
        "gen_cpus": args.gen_cpus,
        "targets": {},
    }
    plain = write_bodies(run_dir / "bodies.jsonl", with_user=False)
    users = write_bodies(run_dir / "bodies-user.jsonl", with_user=True)
    started: list[Service] = []
    try:
        llm = procs.start_fake_llm(logs, args.gen_cpus)
        started.append(llm)
        chat = "/v1/chat/completions"
        for name in targets:
            if name == "direct":
                data["targets"][name] = measure(name, llm.base_url + chat, plain, args, None, llm)
            elif name.startswith("memgate"):
                embedder = procs.start_embedder(logs, args.gen_cpus)
                started.append(embedder)
                gw = procs.start_gateway(logs, run_dir / f"data-{name}", llm.base_url + "/v1",
                                         embedder.base_url + "/v1", args.proxy_cpus,
                                         src=args.gateway_src, extra_path=args.extra_path)  # fmt: skip
                started.append(gw)
                bodies = plain
                if name == "memgate-on":
                    seed_memories(gw)
                    bodies = users
                data["targets"][name] = measure(name, gw.base_url + chat, bodies, args, gw, gw)
                gw.terminate()
                embedder.terminate()
            elif name.startswith("floor-"):
                floor = start_floor(
                    name.removeprefix("floor-"), logs, llm.base_url, args.proxy_cpus
                )
                started.append(floor)
                data["targets"][name] = measure(
                    name, floor.base_url + chat, plain, args, floor, floor
                )
                floor.terminate()
            elif name == "litellm":
                ll = start_litellm(logs, llm.base_url + "/v1", args.proxy_cpus)
                started.append(ll)
                data["targets"][name] = measure(name, ll.base_url + chat, plain, args, ll, ll)
                ll.terminate()
            else:
                raise SystemExit(f"unknown target {name}")
    finally:
        for proc in reversed(started):
            proc.terminate()
    procs.save_results(args.out, data, markdown)


if __name__ == "__main__":
    main()
