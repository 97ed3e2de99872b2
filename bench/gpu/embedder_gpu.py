"""The embedder on a GPU: texts/s of the encoder alone and of the service (issue 18).

    python3 -m bench.gpu.embedder_gpu MODEL_DIR [--seconds 10] [--out results.json]

Direct: sentence-transformers' ``encode`` on CUDA encodes 8,192 memory-like texts in
batches of 64 (the service's GPU default), 256 and 1,024, after a warm-up,
synchronised, best of 3, and one text per call; then the same for the service's
path, the model replayed from CUDA graphs (embedder.cuda_graphs), with its vectors
against ``encode``'s. Service: ``python -m embedder`` with ``EMBEDDER_DEVICE=cuda``,
CUDA graphs on and off, and closed-loop clients (httpx, one text per request or 32,
base64 vectors as the gateway asks) for ``--seconds``; texts/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gpu.pack_weights import texts
from harness.process import free_port, spawn


def direct(model_dir: str) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cuda")
    sample = texts(8192)
    dtype = str(next(model.parameters()).dtype)
    out: dict[str, Any] = {"dtype": dtype, "gpu": torch.cuda.get_device_name(0)}
    out["torch"] = torch.__version__
    model.encode(sample[:2048], batch_size=256, show_progress_bar=False)
    for batch in (64, 256, 1024):
        best = 0.0
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.encode(sample, batch_size=batch, show_progress_bar=False)
            torch.cuda.synchronize()
            best = max(best, len(sample) / (time.perf_counter() - t0))
        out[f"batch_{batch}_texts_per_s"] = round(best)
    t0 = time.perf_counter()
    for t in sample[:200]:
        model.encode([t], show_progress_bar=False)
    out["one_at_a_time_ms"] = round((time.perf_counter() - t0) / 200 * 1000, 2)
    out["cuda_graphs"] = graphs(model, sample)
    return out


def graphs(model: Any, sample: list[str]) -> dict[str, Any]:
    """The service's GPU path (embedder.cuda_graphs, batches of 64): capture time, one
    text per call, batches of 64, and its vectors against ``encode``'s."""
    import numpy as np

    from embedder.cuda_graphs import GraphEncoder

    t0 = time.perf_counter()
    encoder = GraphEncoder(model, "minilm", 64)
    out: dict[str, Any] = {"capture_s": round(time.perf_counter() - t0, 2)}
    reference = model.encode(sample[:1024], normalize_embeddings=True, show_progress_bar=False)
    cosines = np.sum(encoder.encode(sample[:1024]).vectors * reference, axis=1)
    out["cosine_to_encode_min"] = round(float(cosines.min()), 5)
    out["cosine_to_encode_mean"] = round(float(cosines.mean()), 5)
    encoder.encode(sample[:256])
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        encoder.encode(sample)
        best = max(best, len(sample) / (time.perf_counter() - t0))
    out["batch_64_texts_per_s"] = round(best)
    t0 = time.perf_counter()
    for t in sample[:1000]:
        encoder.encode([t])
    out["one_at_a_time_ms"] = round((time.perf_counter() - t0) / 1000 * 1000, 3)
    return out


async def clients(url: str, n: int, per_request: int, seconds: float) -> float:
    import httpx

    sample = texts(4096)
    done = 0
    stop = time.perf_counter() + seconds

    async def one(i: int, client: httpx.AsyncClient) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < stop:
            batch = [sample[(k + j) % len(sample)] for j in range(per_request)]
            r = await client.post(url, json={"input": batch, "encoding_format": "base64"})
            r.raise_for_status()
            done += per_request
            k += n * per_request

    limits = __import__("httpx").Limits(max_connections=n + 4)
    async with __import__("httpx").AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, client) for i in range(n)))
        return done / (time.perf_counter() - t0)


def service(model_dir: str, seconds: float, cuda_graphs: bool) -> dict[str, Any]:
    """The service, its encoder replayed from CUDA graphs (the default) or not."""
    port = free_port()
    env = {"EMBEDDER_PORT": str(port), "EMBEDDER_DEVICE": "cuda", "EMBEDDER_MODEL": model_dir}
    env["EMBEDDER_CUDA_GRAPHS"] = str(cuda_graphs).lower()
    argv = [sys.executable, "-m", "embedder"]
    log_dir = Path(tempfile.gettempdir()) / "embedder-gpu"
    with spawn("embedder", argv, log_dir=log_dir, port=port, env=env) as proc:
        proc.wait_for("/health", 240)
        url = f"{proc.url}/embeddings"
        asyncio.run(clients(url, 8, 1, 2))  # warm-up
        out: dict[str, Any] = {}
        for n, per in ((1, 1), (32, 1), (128, 1), (4, 32), (16, 32)):
            out[f"{n}_clients_x_{per}_texts"] = round(asyncio.run(clients(url, n, per, seconds)))
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = {
        "command": "python3 -m bench.gpu.embedder_gpu " + " ".join(sys.argv[1:]),
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg": os.getloadavg(),
        },
        "direct": direct(args.model_dir),
        "service_cuda_graphs": service(args.model_dir, args.seconds, cuda_graphs=True),
        "service_encode": service(args.model_dir, args.seconds, cuda_graphs=False),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
