"""Memory-on chat turns: what recall adds, the sustained rate, bulk import (issue 18).

    .venv/bin/python -m bench.memory_turns [--parts recall,sustained,import]
        [--variant now=.] [--variant before=bench/.work/before]
        [--out bench/results/memory_turns.json]

Each ``--variant NAME=SRC`` runs the gateway and the embedder from the checkout
at SRC (``git worktree add --detach bench/.work/before <rev>`` makes one), so
a run compares a revision with today's code on the same machine at the same
time. Per variant, pinned as ``bench/soak.py`` pins them: the embedder alone on
CPU 1 (one ONNX Runtime thread), the gateway, the stand-in LLM and the load
generator on CPU 0.

* **recall** — memory on vs off, side by side at ``--recall-rate`` (open loop,
  ``--seconds`` each, alternated ``--rounds`` times): every request names one
  of ``--users`` users, each seeded with ``--seed-memories`` memories (200),
  and carries a new message, so each turn embeds its query, searches, adds a
  system message, and stores two memories. Added = on - off, per percentile,
  the median over rounds.
* **sustained** — a ladder of rates with memory on; a step counts until the
  outbox is empty again, so a rate is sustained only when every turn's two
  memories are stored, not queued: turns / (time from the first request to
  the empty outbox) must reach 97 % of the offered rate, with no errors.
  Also, whatever the wall clock: the embedder's CPU seconds per turn (from
  /proc) and the texts it embedded per turn, so **1 / CPU per turn** is the
  rate one embedder core can carry even on a loaded machine.
* **import** — ``POST /v1/memories`` with batches of ``--import-batch``
  messages in one session per user, one request at a time (each answer is
  the client's progress); memories/s and the embedder's CPU per memory.

Every results file records the command, the machine, the load average before
and after each part, and the git revision.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs, turn_breakdown
from bench.procs import WORK
from harness.process import ROOT, Service, free_port, pinned, spawn

MODEL = "fake-model"
TOPICS = ["cooking", "travel", "books", "work", "fitness", "music", "pets", "gardening"]
WORDS = [
    "I",
    "went",
    "to",
    "the",
    "market",
    "on",
    "Saturday",
    "and",
    "bought",
    "fresh",
    "tomatoes",
    "basil",
    "and",
    "a",
    "loaf",
    "of",
    "bread",
    "my",
    "sister",
    "called",
    "to",
    "say",
    "her",
    "new",
    "job",
    "at",
    "the",
    "hospital",
    "starts",
    "next",
    "month",
    "she",
    "is",
    "nervous",
    "we",
    "are",
    "planning",
    "a",
    "trip",
    "to",
    "the",
    "mountains",
    "in",
    "October",
    "with",
    "the",
    "kids",
    "and",
    "the",
    "dog",
]


def metric(base_url: str, name: str, *needles: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{", 1)[0] in (name, name + "_total") and all(n in key for n in needles):
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


def sentence(rng: random.Random, n: int) -> str:
    start = rng.randrange(len(WORDS))
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def chat_bodies(path: Path, n: int, users: int, memory: bool, seed: int) -> Path:
    """``n`` chat requests, each a new message (~20 words) of one of ``users`` users."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            content = (
                f"Turn {seed}-{i}: {sentence(rng, 14)}; what do you think about "
                f"{rng.choice(TOPICS)} and {rng.choice(TOPICS)}?"
            )
            body: dict[str, Any] = {
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 64,
            }
            if memory:
                body["user"] = f"turns-user-{i % users}"
            f.write(json.dumps(body) + "\n")
    return path


def conversation(
    rng: random.Random, prefix: str, numbers: range, max_words: int
) -> list[dict[str, str]]:
    """Messages numbered ``numbers``, user and assistant in turn, of 8 to ``max_words`` words."""
    return [
        {"role": "user" if k % 2 == 0 else "assistant",
         "content": f"{prefix}{k}: {sentence(rng, rng.randint(8, max_words))}"}
        for k in numbers
    ]  # fmt: skip


def seed(gateway: str, users: int, per_user: int, batch: int = 16) -> None:
    rng = random.Random(1)
    with httpx.Client(base_url=gateway, timeout=600) as client:
        for u in range(users):
            for start in range(0, per_user, batch):
                messages = conversation(
                    rng, f"Memory {u}-", range(start, min(per_user, start + batch)), 24
                )
                body = {"user_id": f"turns-user-{u}", "messages": messages,
                        "session_id": f"seed-{start}"}  # fmt: skip
                r = client.post("/v1/memories", json=body)
                r.raise_for_status()
    wait_outbox_empty(gateway, 600)


def wait_outbox_empty(gateway: str, timeout: float) -> float:
    """Seconds until the gateway's outbox is empty (polled every 50 ms)."""
    t0 = time.monotonic()
    while metric(gateway, "memgate_outbox_depth") > 0:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("outbox not empty")
        time.sleep(0.05)
    return time.monotonic() - t0


def written(gateway: str) -> float:
    """Memories written so far: stored, or found stored already (the same text again)."""
    return metric(gateway, "memgate_memory_writes", 'outcome="stored"') + metric(
        gateway, "memgate_memory_writes", 'outcome="duplicate"'
    )


def wait_stored(stack: Stack, stored: float, timeout: float) -> float:
    """Seconds until the outbox is empty and ``stored`` memories were written in all
    (a turn's memories are queued just after its answer, so an empty outbox alone
    can come a moment early); gives up after ``timeout`` and returns the time spent."""
    t0 = time.monotonic()
    wait_outbox_empty(stack.url, timeout)
    while written(stack.url) < stored:
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.05)
    return time.monotonic() - t0


def loadgen(url: str, bodies: Path, rate: float, seconds: float, cpus: str) -> dict[str, Any]:
    argv = [procs.tools_python(), "-m", "bench.loadgen", "--url", url,
            "--body-file", str(bodies), "--rate", str(rate), "--duration", str(seconds),
            "--warmup", "0", "--timeout", "60"]  # fmt: skip
    out = subprocess.run(pinned(cpus, argv), capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class Stack:
    def __init__(self, name: str, src: Path, run_dir: Path, args: argparse.Namespace) -> None:
        self.name, self.src, self.args = name, src, args
        logs = run_dir / "logs"
        self.llm = procs.start_fake_llm(logs, args.gen_cpus)
        self.embedder = start_embedder(logs, args.embedder_cpus, src, args.embedder_env)
        self.gateway = procs.start_gateway(
            logs, run_dir / "data", self.llm.base_url + "/v1", self.embedder.base_url + "/v1",
            args.proxy_cpus, src=src,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return self.gateway.base_url

    def counters(self) -> dict[str, float]:
        return {
            "embedder_cpu_s": procs.cpu_seconds(self.embedder.pid),
            "gateway_cpu_s": procs.cpu_seconds(self.gateway.pid),
            "texts": metric(self.embedder.base_url, "embedder_inputs"),
            "stored": written(self.url),
            "degraded": metric(self.url, "memgate_memory_recalls", "degraded"),
        }

    def stop(self) -> None:
        for p in (self.gateway, self.embedder, self.llm):
            p.terminate()


def start_embedder(log_dir: Path, cpus: str, src: Path, extra: list[str]) -> Service:
    env = {
        "EMBEDDER_PORT": str(port := free_port()),
        "EMBEDDER_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "EMBEDDER_ONNX_CACHE_DIR": str(WORK / "onnx-cache"),
        **dict(e.split("=", 1) for e in extra),
    }  # fmt: skip
    proc = spawn("embedder", [procs.PY, "-m", "embedder"], port=port, log_dir=log_dir,
                 cpus=cpus, env=env, cwd=src)  # fmt: skip
    return proc.wait_for("/health", 300)


def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


def part_recall(stack: Stack, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.recall_rate * args.seconds) + 10
    rounds: list[dict[str, Any]] = []
    url = stack.url + "/v1/chat/completions"
    for r in range(args.rounds):
        row: dict[str, Any] = {}
        for mode in ("off", "on"):
            bodies = chat_bodies(run_dir / f"recall-{mode}-{r}.jsonl", n, args.users,
                                 mode == "on", seed=100 + r)  # fmt: skip
            before, hist = stack.counters(), turn_breakdown.snapshot(stack.url)
            row[mode] = loadgen(url, bodies, args.recall_rate, args.seconds, args.gen_cpus)
            row[f"{mode}_breakdown"] = turn_breakdown.per_turn(
                hist, turn_breakdown.snapshot(stack.url)
            )
            row[f"{mode}_drain_s"] = wait_outbox_empty(stack.url, 300)
            row[f"{mode}_counters"] = delta(before, stack.counters())
        rounds.append(row)
    added = {}
    for p in ("p50", "p90", "p99"):
        diffs = [r["on"]["latency_ms"][p] - r["off"]["latency_ms"][p] for r in rounds]
        added[p] = {"median": statistics.median(diffs), "each": diffs}
    return {"rate": args.recall_rate, "seconds": args.seconds, "rounds": rounds, "added_ms": added,
            "errors": sum(r[m]["error_count"] for r in rounds for m in ("on", "off")),
            "degraded": sum(r["on_counters"]["degraded"] for r in rounds)}  # fmt: skip


def part_sustained(stack: Stack, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    steps = []
    url = stack.url + "/v1/chat/completions"
    for i, rate in enumerate(args.rates):
        n = int(rate * args.seconds) + 10
        bodies = chat_bodies(run_dir / f"ladder-{rate}.jsonl", n, args.users, True, seed=500 + i)
        before = stack.counters()
        load = loadgen(url, bodies, rate, args.seconds, args.gen_cpus)
        turns = load["ok"]
        drain = wait_stored(stack, before["stored"] + 2 * turns, 300)
        d = delta(before, stack.counters())
        # from the first request sent to the last answer, then until the outbox is empty
        span = turns / max(load["achieved_rps"], 1e-9) + drain
        step = {
            "offered": rate, "turns": turns, "errors": load["error_count"],
            "drain_after_load_s": drain, "turns_per_s_until_stored": turns / span,
            "latency_ms": load["latency_ms"], "memories_stored": d["stored"],
            "embedder_cpu_ms_per_turn": 1000 * d["embedder_cpu_s"] / max(turns, 1),
            "gateway_cpu_ms_per_turn": 1000 * d["gateway_cpu_s"] / max(turns, 1),
            "texts_per_turn": d["texts"] / max(turns, 1),
            "loadavg": procs.loadavg(),
        }  # fmt: skip
        step["sustained"] = (
            step["errors"] == 0
            and step["turns_per_s_until_stored"] >= 0.97 * rate
            and step["memories_stored"] >= 2 * turns
        )
        steps.append(step)
        print(f"  {stack.name} {rate:g}/s: {step['turns_per_s_until_stored']:.1f} turns/s until "
              f"stored, drain {drain:.1f}s, embedder {step['embedder_cpu_ms_per_turn']:.2f} ms CPU"
              f"/turn, {step['texts_per_turn']:.2f} texts/turn, load {step['loadavg'][0]}",
              flush=True)  # fmt: skip
        if not step["sustained"] and drain > args.seconds:  # far past it: stop climbing
            break
    ok = [s["offered"] for s in steps if s["sustained"]]
    cpu = [s["embedder_cpu_ms_per_turn"] for s in steps]
    return {"steps": steps, "highest_sustained": max(ok) if ok else None,
            "embedder_cpu_ms_per_turn_median": statistics.median(cpu),
            "turns_per_embedder_core": 1000 / statistics.median(cpu)}  # fmt: skip


def part_import(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    total, batch = args.import_memories, args.import_batch
    before = stack.counters()
    progress = []
    t0 = time.perf_counter()
    with httpx.Client(base_url=stack.url, timeout=600) as client:
        for start in range(0, total, batch):
            messages = conversation(rng, "Imported ", range(start, min(total, start + batch)), 30)
            r = client.post("/v1/memories", json={
                "user_id": f"import-user-{start // 1000}", "messages": messages,
                "session_id": f"import-{start // 1000}",
            })  # fmt: skip
            if r.status_code not in (200, 201, 202):
                raise RuntimeError(f"import -> {r.status_code}: {r.text[:300]}")
            done = start + len(messages)
            progress.append((round(time.perf_counter() - t0, 3), done, r.status_code))
    drain = wait_outbox_empty(stack.url, 600)
    elapsed = time.perf_counter() - t0
    d = delta(before, stack.counters())
    return {"memories": total, "batch": batch, "seconds": elapsed, "drain_s": drain,
            "memories_per_s": total / elapsed, "stored": d["stored"],
            "embedder_cpu_ms_per_memory": 1000 * d["embedder_cpu_s"] / total,
            "gateway_cpu_ms_per_memory": 1000 * d["gateway_cpu_s"] / total,
            "texts_per_memory": d["texts"] / total, "progress": progress}  # fmt: skip


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    out = [
        "# Memory-on chat turns\n",
        f"Machine: {m['nproc']} x {m['cpu_model']}, load average at start {m['loadavg']}, at end "
        f"{data.get('loadavg_end')}; git {data['git']}. Command: `{data['command']}`\n",
    ]
    for name, v in data["variants"].items():
        out.append(f"## {name} (`{v['src']}`)\n")
        if "recall" in v:
            r = v["recall"]
            a = r["added_ms"]
            out.append(
                f"**Recall**, {r['rate']:g} req/s, {r['seconds']:g} s x {len(r['rounds'])} rounds, "
                f"on vs off: added p50 **{a['p50']['median']:+.2f} ms**, "
                f"p90 {a['p90']['median']:+.2f}, "
                f"p99 **{a['p99']['median']:+.2f} ms** (median over rounds; each: p50 "
                f"{', '.join(f'{x:+.2f}' for x in a['p50']['each'])}; p99 "
                f"{', '.join(f'{x:+.2f}' for x in a['p99']['each'])}); errors {r['errors']}, "
                f"degraded recalls {r['degraded']:g}.\n"
            )
            out.append("| round | off p50 / p99 ms | on p50 / p99 ms |\n|---|---|---|")
            for i, row in enumerate(r["rounds"]):
                off, on = row["off"]["latency_ms"], row["on"]["latency_ms"]
                out.append(f"| {i + 1} | {off['p50']:.2f} / {off['p99']:.2f} | "
                           f"{on['p50']:.2f} / {on['p99']:.2f} |")  # fmt: skip
            out.append("")
            out += turn_breakdown.markdown(r["rounds"])
        if "sustained" in v:
            s = v["sustained"]
            out.append(
                f"**Sustained**: highest rate with every turn's memories stored: "
                f"**{s['highest_sustained']} turns/s**; embedder CPU per turn (median) "
                f"{s['embedder_cpu_ms_per_turn_median']:.2f} ms, so one embedder core carries "
                f"**{s['turns_per_embedder_core']:.0f} turns/s**.\n"
            )
            out.append("| offered /s | turns/s until stored | drain after load s | errors | "
                       "p50 / p99 ms | embedder CPU ms/turn | gateway CPU ms/turn | texts/turn | "
                       "sustained | load |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
            for st in s["steps"]:
                lat = st["latency_ms"]
                out.append(
                    f"| {st['offered']:g} | {st['turns_per_s_until_stored']:.1f} | "
                    f"{st['drain_after_load_s']:.1f} | {st['errors']} | {lat['p50']:.1f} / "
                    f"{lat['p99']:.1f} | {st['embedder_cpu_ms_per_turn']:.2f} | "
                    f"{st['gateway_cpu_ms_per_turn']:.2f} | {st['texts_per_turn']:.2f} | "
                    f"{'yes' if st['sustained'] else 'no'} | {st['loadavg'][0]} |"
                )
            out.append("")
        if "import" in v:
            i = v["import"]
            out.append(
                f"**Import**: {i['memories']} memories in batches of {i['batch']} messages: "
                f"**{i['memories_per_s']:.0f} memories/s** ({i['seconds']:.1f} s, all stored: "
                f"{i['stored']:g}); embedder CPU {i['embedder_cpu_ms_per_memory']:.2f} ms and "
                f"gateway CPU {i['gateway_cpu_ms_per_memory']:.2f} ms per memory; "
                f"{i['texts_per_memory']:.2f} texts embedded per memory.\n"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="recall,sustained,import")
    p.add_argument("--variant", action="append", default=[], help="NAME=SRC checkout")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--seed-memories", type=int, default=200)
    p.add_argument("--recall-rate", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rates", default="15,30,45,60,75,90")
    p.add_argument("--import-memories", type=int, default=3000)
    p.add_argument("--import-batch", type=int, default=100)
    p.add_argument("--embedder-env", action="append", default=[], help="EMBEDDER_X=value")
    p.add_argument("--proxy-cpus", default="0")
    p.add_argument("--gen-cpus", default="0")
    p.add_argument("--embedder-cpus", default="1")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "memory_turns.json")
    args = p.parse_args()
    args.rates = [float(x) for x in args.rates.split(",")]
    parts = args.parts.split(",")
    variants = [v.split("=", 1) for v in args.variant] or [["now", "."]]
    procs.exit_on_sigterm()
    WORK.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"command": "python -m bench.memory_turns " + " ".join(sys.argv[1:]),
                            "machine": procs.machine_info(), "git": procs.git_rev(),
                            "variants": {}}  # fmt: skip
    for name, src in variants:
        run_dir = Path(tempfile.mkdtemp(prefix=f"turns-{name}-", dir=WORK))
        stack = Stack(name, (ROOT / src).resolve(), run_dir, args)
        v: dict[str, Any] = {"src": src}
        data["variants"][name] = v
        try:
            v["load_before"] = procs.loadavg()
            if "recall" in parts or "sustained" in parts:
                seed(stack.url, args.users, args.seed_memories)
            if "recall" in parts:
                v["recall"] = part_recall(stack, run_dir, args)
            if "sustained" in parts:
                v["sustained"] = part_sustained(stack, run_dir, args)
            if "import" in parts:
                v["import"] = part_import(stack, args)
            v["load_after"] = procs.loadavg()
        finally:
            stack.stop()
    procs.save_results(args.out, data, markdown)


if __name__ == "__main__":
    main()
