"""Profile the gateway's hot path under load with py-spy, memory off and on.

    .venv/bin/python -m bench.profile_gateway [--rate 150] [--seconds 20] [--modes off,on]
    .venv/bin/python -m bench.profile_gateway --modes off --wrk [--gateway-src DIR --label NAME]

For each mode: starts the stand-in upstream and the embedder (CPU 1), the
gateway (CPU 0, defaults, log level warning), seeds 5 memories for each of 20
users (mode "on"), drives the gateway with bench/loadgen.py at a fixed rate
(plain and streaming requests alternate by running two generators), and runs
``py-spy record`` on the gateway meanwhile (100 samples/s, ``--nonblocking``
so the gateway is never paused, idle frames dropped). Writes to bench/results/:

  profile-<mode>.svg         the flamegraph
  profile-<mode>.txt         collapsed stacks (py-spy ``raw`` format), for other tools
                             (two py-spy processes sample the same run)
  profile-<mode>.md          the top functions by inclusive and by self time, and the
                             time by library of the innermost frame, % of the samples
                             where the gateway was on CPU

``--wrk`` drives it closed loop instead (wrk, 8 connections, plain requests
only: as fast as it goes) and adds the gateway's requests/s and CPU time per
request; ``--spy-rate`` samples more often. ``--gateway-src`` profiles another
copy of the gateway package (e.g. ``git archive REV gateway | tar -x -C DIR``),
``--label`` names the output files (profile-<label>.*) instead of the mode.

py-spy comes from bench/.work/tools-venv (``pip install py-spy``); it needs
ptrace permission (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import overhead, procs
from bench.procs import WORK
from harness.process import ROOT, Service, pinned

PYSPY = WORK / "tools-venv" / "bin" / "py-spy"
FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """'send (httpx/_client.py:1629)' -> 'httpx/_client.py:send' (line numbers dropped)."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m.group('func')}"


def summarize(collapsed: Path, top: int = 30) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    by_library: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        for f in set(frames):
            inclusive[f] += count
        self_time[frames[-1]] += count
        by_area[area(frames)] += count
        by_library[library(frames[-1])] += count
    lines = [f"Samples on CPU: {total} (py-spy, idle excluded).", "",
             "### Where the time goes (specific areas anywhere on the stack first, else the innermost frame's owner)", "",
             "| area | % of samples |", "|---|---|"]  # fmt: skip
    for name, count in by_area.most_common():
        lines.append(f"| {name} | {100 * count / total:.1f} |")
    lines += ["", f"### Top {top} by inclusive time", "", "| function | inclusive % | self % |",
              "|---|---|---|"]  # fmt: skip
    for name, count in inclusive.most_common(top):
        lines.append(
            f"| `{name}` | {100 * count / total:.1f} | {100 * self_time[name] / total:.1f} |"
        )
    lines += ["", f"### Top {top} by self time", "", "| function | self % |", "|---|---|"]
    for name, count in self_time.most_common(top):
        lines.append(f"| `{name}` | {100 * count / total:.1f} |")
    lines += ["", "### By library of the innermost frame", "", "| library or module | self % |",
              "|---|---|"]  # fmt: skip
    for name, count in by_library.most_common(top):
        lines.append(f"| `{name}` | {100 * count / total:.1f} |")
    return "\n".join(lines) + "\n"


# Checked in this order against the whole stack: the first marker found names the sample's area.
AREAS = [
    (
        "_assign_requests_to_connections",
        "httpcore pool: per-request scan of every pooled connection",
    ),
    ("run_in_threadpool", "sync FastAPI dependency run in the threadpool"),
    ("gateway/memory/embedder_client", "memory: embedder client call"),
    ("gateway/memory/edge_store", "memory: Qdrant Edge"),
    ("gateway/memory/qdrant_store", "memory: qdrant-client"),
    ("gateway/memory/outbox", "memory: outbox (SQLite)"),
    ("gateway/memory/service.py:MemoryService.write_now", "memory: background write"),
    ("gateway/memory/service.py:MemoryService.drain", "memory: outbox replay"),
    ("gateway/memory/prompt", "memory: prompt building"),
    ("gateway/upstream/sse", "stream accumulator (SSE parse)"),
    ("tenacity", "tenacity retry wrapper"),
    ("httpcore", "httpcore: upstream request/response I/O"),
    ("httpx", "httpx: request building, response wrapping"),
    ("gateway/api/chat.py:validate_chat", "request validation (pydantic)"),
    ("gateway/api/chat.py:parse_json_object", "request JSON parse"),
    ("prometheus_client", "metrics (prometheus_client)"),
]
# Otherwise the innermost frame's owner names it.
INNERMOST = [
    ("h11", "server HTTP parsing (h11)"),
    ("uvicorn", "uvicorn protocol"),
    ("gateway/observability", "request-context middleware"),
    ("fastapi/dependencies", "fastapi dependency solving"),
    ("starlette", "starlette/fastapi routing, responses"),
    ("fastapi", "starlette/fastapi routing, responses"),
    ("pydantic", "pydantic"),
    ("gateway/", "other gateway code"),
    ("json", "json"),
    ("asyncio", "asyncio event loop (I/O, scheduling)"),
    ("threading", "worker threads (waiting on the GIL/queues)"),
    ("queue.py", "worker threads (waiting on the GIL/queues)"),
]


def library(frame: str) -> str:
    """'httpcore/_async/http11.py:f' -> 'httpcore'; gateway modules and stdlib files stay whole."""
    path = frame.split(":", 1)[0]
    return path if path.startswith("gateway/") or "/" not in path else path.split("/", 1)[0]


def area(frames: list[str]) -> str:
    stack = ";".join(frames)
    for marker, name in AREAS:
        if marker in stack:
            return name
    for frame in reversed(frames):
        for marker, name in INNERMOST:
            if marker in frame:
                return name
    return "other"


def start_load(url: str, bodies: Path, args: argparse.Namespace) -> Callable[[], str]:
    """Start the load on CPU 1 for ``--seconds`` + 4 s; the returned function waits
    for it to end and says what it did."""
    if args.wrk:
        result: dict[str, Any] = {}

        def run() -> None:
            result.update(overhead.wrk(url, bodies, "1", False, args.seconds + 4, conns=8))

        thread = threading.Thread(target=run)
        thread.start()

        def wrk_done() -> str:
            thread.join()
            return (
                f"wrk, 8 connections, plain: {result['rps']:.0f} req/s, non-2xx {result['non_2xx']}"
            )

        return wrk_done
    gen = [procs.tools_python(), "-m", "bench.loadgen", "--url", url,
           "--body-file", str(bodies), "--rate", str(args.rate / 2),
           "--duration", str(args.seconds + 4), "--warmup", "0"]  # fmt: skip
    loads = [subprocess.Popen(pinned("1", gen + extra), stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for extra in ([], ["--stream"])]  # fmt: skip

    def open_loop_done() -> str:
        outputs = [load.communicate()[0].strip()[:400] for load in loads]
        return f"{args.rate:g} req/s offered, half streaming: " + " / ".join(outputs)

    return open_loop_done


def profile(mode: str, args: argparse.Namespace) -> None:
    label = args.label or mode
    run_dir = Path(tempfile.mkdtemp(prefix=f"profile-{label}-", dir=WORK))
    logs = run_dir / "logs"
    started: list[Service] = []
    try:
        llm = procs.start_fake_llm(logs, "1")
        embedder = procs.start_embedder(logs, "1")
        started += [llm, embedder]
        gw = procs.start_gateway(logs, run_dir / "data", llm.base_url + "/v1",
                                 embedder.base_url + "/v1", "0", src=args.gateway_src)  # fmt: skip
        started.append(gw)
        bodies = overhead.write_bodies(run_dir / "bodies.jsonl", with_user=mode == "on")
        if mode == "on":
            overhead.seed_memories(gw)
        url = gw.base_url + "/v1/chat/completions"
        overhead.loadgen(url, bodies, args.rate, 3.0, 0.0, False, "1")  # warm up
        load_done = start_load(url, bodies, args)
        time.sleep(2)
        out = procs.RESULTS
        svg, raw = out / f"profile-{label}.svg", out / f"profile-{label}.txt"
        base = [str(PYSPY), "record", "--pid", str(gw.pid), "--duration", str(args.seconds),
                "--rate", str(args.spy_rate), "--nonblocking"]  # fmt: skip
        cpu0 = procs.cpu_seconds(gw.pid)
        spies = [subprocess.Popen(pinned("1", [*base, "--format", fmt, "-o", str(path)]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for fmt, path in (("raw", raw), ("flamegraph", svg))]  # fmt: skip
        for spy in spies:
            spy.wait()
        cpu_s = procs.cpu_seconds(gw.pid) - cpu0
        load = load_done()
        print(f"  load ({label}): {load}")
        md = out / f"profile-{label}.md"
        md.write_text(f"# Gateway profile, memory {mode}\n\n"
                      f"Command: `python -m bench.profile_gateway {' '.join(sys.argv[1:])}`; "
                      f"git {procs.git_rev()}; load average {procs.loadavg()}. Load: {load}. "
                      f"Gateway CPU while sampled: {cpu_s:.1f} s in {args.seconds} s; py-spy at "
                      f"{args.spy_rate} Hz.\n\n" + summarize(raw))  # fmt: skip
        print(md.read_text())
    finally:
        for proc in reversed(started):
            proc.terminate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=150.0)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--modes", default="off,on")
    p.add_argument("--wrk", action="store_true", help="closed loop: wrk, 8 connections, plain")
    p.add_argument("--spy-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--gateway-src", type=Path, default=ROOT, help="dir holding gateway/")
    p.add_argument("--label", default=None, help="output name instead of the mode")
    args = p.parse_args()
    if not PYSPY.exists():
        raise SystemExit(f"{PYSPY} missing: {WORK}/tools-venv/bin/pip install py-spy")
    for mode in args.modes.split(","):
        profile(mode, args)


if __name__ == "__main__":
    main()
