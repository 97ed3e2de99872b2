"""LoCoMo turn-level evidence recall through the gateway's memory API (issue 8).

    .venv/bin/python -m bench.locomo_recall PATH.json [PATH.json ...] \
        [--gateway-url http://127.0.0.1:8080] [--json out.json]

Each conversation is ingested as its own user, one memory per turn, exactly as a
client would write it: ``POST /v1/memories`` with ``text = "<speaker>: <text>"``
(plus `` [shares <image caption>]`` when the turn shared an image), ``metadata =
{"dia_id": ...}``, ``timestamp`` = the session's date and time and ``session_id`` =
``"<conversation>/session_<n>"``. Turns of one conversation are written in dialogue
order, one call per turn (the ``messages`` form would give every turn the same
metadata); conversations are written concurrently, with at most ``--concurrency``
requests in flight. Then every question of categories 1-4 that has evidence is asked
through ``POST /v1/memories/search`` (``top_k`` 25), and the script reports
turn-level evidence recall@1/5/10/25 (the fraction of a question's evidence turns
found among the first k memories, averaged over questions) overall and per
category, with the client-measured search latency p50/p95.

Without ``--gateway-url`` it starts its own embedder (``python -m embedder``) and
gateway (``python -m gateway``, Qdrant Edge under a temporary data dir) on free
loopback ports and stops them at the end. The LoCoMo data is CC BY-NC 4.0: it is
never copied into the project; give the path of your copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.locomo.data import CATEGORIES, Conversation, load_conversations
from bench.locomo.metrics import KS, percentile
from harness.process import Service, free_port, spawn

_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------- processes


class LocalStack:
    """An embedder and a gateway started as child processes on loopback ports."""

    def __init__(self, python: str = sys.executable, startup_timeout: float = 240.0) -> None:
        self.python = python
        self.timeout = startup_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="locomo-recall-"))
        self.procs: list[Service] = []
        self.url = ""

    def _start(self, name: str, port: int, env: dict[str, str]) -> Service:
        proc = spawn(name, [self.python, "-m", name], log_dir=self.tmp, port=port, env=env)
        self.procs.append(proc)
        return proc

    def start(self) -> str:
        deadline = time.monotonic() + self.timeout
        e_port, g_port = free_port(), free_port()
        embedder = self._start(
            "embedder",
            e_port,
            {
                "EMBEDDER_HOST": "127.0.0.1",
                "EMBEDDER_PORT": str(e_port),
            },
        )
        embedder.wait_for("/health", deadline - time.monotonic())
        gateway = self._start(
            "gateway",
            g_port,
            {
                "GATEWAY_HOST": "127.0.0.1",
                "GATEWAY_PORT": str(g_port),
                "GATEWAY_EMBEDDER_URL": f"http://127.0.0.1:{e_port}/v1",
                "GATEWAY_DATA_DIR": str(self.tmp / "data"),
                # the memory API never calls the LLM; nothing listens here
                "GATEWAY_LLM_URL": f"http://127.0.0.1:{free_port()}/v1",
            },
        )
        self.url = gateway.base_url
        gateway.wait_for("/livez", deadline - time.monotonic())
        # ready when a write goes through (the store and the embedder are usable)
        probe = f"locomo-probe-{uuid.uuid4().hex[:8]}"
        while True:
            try:
                r = httpx.post(
                    f"{self.url}/v1/memories",
                    json={"user_id": probe, "text": "probe"},
                    timeout=10.0,
                )
                if r.status_code == 201:
                    httpx.delete(f"{self.url}/v1/memories", params={"user_id": probe}, timeout=10.0)
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway does not store memories:\n{gateway.log()[-4000:]}")
            time.sleep(0.5)
        return self.url

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate(timeout=20)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------- the run


@dataclass
class ConvRun:
    conv: Conversation
    user_id: str
    ids: dict[str, set[str]] = field(default_factory=dict)  # memory id -> dia_ids
    queued: int = 0
    rows: list[tuple[int, list[set[str]], list[str]]] = field(default_factory=list)


class RecallRun:
    def __init__(
        self,
        client: httpx.AsyncClient,
        convs: list[Conversation],
        run_id: str,
        concurrency: int,
        top_k: int,
    ) -> None:
        self.client = client
        self.runs = [ConvRun(c, f"locomo-{run_id}-{c.name}") for c in convs]
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.top_k = top_k
        self.latencies_ms: list[float] = []

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(8):
            async with self.sem:
                r = await self.client.post(path, json=body)
            if r.status_code in (429, 503) and attempt < 7:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            return r
        return r

    async def _ingest_one(self, run: ConvRun) -> None:
        for m in run.conv.memories:
            r = await self._post(
                "/v1/memories",
                {
                    "user_id": run.user_id,
                    "text": m.text,
                    "metadata": {"dia_id": m.dia_id},
                    "timestamp": m.timestamp.isoformat(),
                    "session_id": m.session_id,
                },
            )
            if r.status_code not in (201, 202):
                raise RuntimeError(f"POST /v1/memories -> {r.status_code}: {r.text[:500]}")
            if r.status_code == 202:
                run.queued += 1
            for res in r.json()["results"]:
                run.ids.setdefault(res["id"], set()).add(m.dia_id)

    async def ingest(self) -> None:
        await asyncio.gather(*(self._ingest_one(run) for run in self.runs))

    async def _count(self, user_id: str) -> int:
        n, cursor = 0, None
        while True:
            params: dict[str, Any] = {"user_id": user_id, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = await self.client.get("/v1/memories", params=params)
            r.raise_for_status()
            body = r.json()
            n += len(body["results"])
            cursor = body.get("next_cursor")
            if not cursor:
                return n

    async def wait_visible(self, stall_s: float = 90.0) -> int:
        """Writes answered 202 sit in the outbox; wait until they are stored.

        Waits as long as the stored count keeps growing; gives up after ``stall_s``
        without progress and returns how many memories are still missing."""
        missing = 0
        for run in self.runs:
            if not run.queued:
                continue
            last, last_change = -1, time.monotonic()
            while (n := await self._count(run.user_id)) < len(run.ids):
                if n != last:
                    last, last_change = n, time.monotonic()
                elif time.monotonic() - last_change > stall_s:
                    print(
                        f"warning: {run.user_id}: {len(run.ids) - n} queued memories not "
                        f"stored after {stall_s:.0f}s without progress",
                        file=sys.stderr,
                    )
                    missing += len(run.ids) - n
                    break
                await asyncio.sleep(1.0)
        return missing

    async def warm_up(self, n: int) -> None:
        """A few searches first, so the first query's connection set-up is not timed."""
        for i in range(n):
            run = self.runs[i % len(self.runs)]
            await self.client.post(
                "/v1/memories/search",
                json={"user_id": run.user_id, "query": "how are you doing?", "top_k": self.top_k},
            )

    async def ask(self) -> None:
        # one question at a time, so the latency is that of an unloaded gateway
        for run in self.runs:
            for q in run.conv.questions:
                body = {"user_id": run.user_id, "query": q.question, "top_k": self.top_k}
                t0 = time.perf_counter()
                r = await self.client.post("/v1/memories/search", json=body)
                self.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                if r.status_code != 200:
                    raise RuntimeError(f"search -> {r.status_code}: {r.text[:500]}")
                ranked = []
                for res in r.json()["results"]:
                    dias = set(run.ids.get(res["id"], ()))
                    meta = res.get("metadata") or {}
                    if meta.get("dia_id"):
                        dias.add(str(meta["dia_id"]))
                    ranked.append(dias)
                run.rows.append((q.category, ranked, q.evidence))

    async def forget(self) -> None:
        for run in self.runs:
            await self.client.delete("/v1/memories", params={"user_id": run.user_id})


def recall(ranked: Sequence[set[str]], evidence: Sequence[str], k: int) -> float:
    found: set[str] = set()
    for dias in ranked[:k]:
        found |= dias
    ev = set(evidence)
    return len(ev & found) / len(ev)


def report(runs: list[ConvRun], latencies: list[float], ks: Sequence[int] = KS) -> dict[str, Any]:
    groups: dict[str, list[tuple[list[set[str]], list[str]]]] = {"all": []}
    for run in runs:
        for cat, ranked, ev in run.rows:
            groups["all"].append((ranked, ev))
            groups.setdefault(str(cat), []).append((ranked, ev))
    out: dict[str, Any] = {"recall": {}, "questions": {}}
    for g in ["all"] + [str(c) for c in CATEGORIES if str(c) in groups]:
        items = groups[g]
        out["questions"][g] = len(items)
        out["recall"][g] = {
            str(k): round(100.0 * sum(recall(r, e, k) for r, e in items) / len(items), 2)
            for k in ks
        }
    out["latency_ms"] = {
        "p50": round(percentile(latencies, 50), 2),
        "p95": round(percentile(latencies, 95), 2),
        "p99": round(percentile(latencies, 99), 2),
        "max": round(max(latencies), 2) if latencies else None,
        "mean": round(sum(latencies) / len(latencies), 2) if latencies else None,
        "n": len(latencies),
    }
    out["latencies_ms"] = [round(x, 3) for x in latencies]
    out["memories"] = sum(len(r.conv.memories) for r in runs)
    out["conversations"] = [r.conv.name for r in runs]
    return out


def markdown(result: dict[str, Any], ks: Sequence[int] = KS) -> str:
    head = "| questions | n | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [head, "|---|---|" + "---|" * len(ks)]
    for g, rec in result["recall"].items():
        label = "all (categories 1-4)" if g == "all" else f"{g} {CATEGORIES[int(g)]}"
        lines.append(
            f"| {label} | {result['questions'][g]} | "
            + " | ".join(f"{rec[str(k)]:.1f}" for k in ks)
            + " |"
        )
    lat = result["latency_ms"]
    lines.append("")
    lines.append(
        f"search latency (client-measured, {lat['n']} queries): "
        f"p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms"
    )
    lines.append(
        f"{result['memories']} memories in {len(result['conversations'])} "
        f"conversations ({', '.join(result['conversations'])}); ingest "
        f"{result.get('ingest_s', 0):.1f} s; {result.get('writes_queued', 0)} writes answered "
        f"202 (outbox), {result.get('memories_missing', 0)} never became searchable"
    )
    return "\n".join(lines)


async def _amain(args: argparse.Namespace, url: str) -> dict[str, Any]:
    convs = load_conversations(args.paths)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(4, args.concurrency * 2))
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        run = RecallRun(
            client, convs, args.run_id or uuid.uuid4().hex[:8], args.concurrency, args.top_k
        )
        try:
            t0 = time.perf_counter()
            await run.ingest()
            missing = await run.wait_visible()
            ingest_s = time.perf_counter() - t0
            await run.warm_up(args.warmup)
            await run.ask()
        finally:
            if not args.keep:
                await run.forget()
    result = report(run.runs, run.latencies_ms)
    result["ingest_s"] = round(ingest_s, 2)
    result["writes_queued"] = sum(r.queued for r in run.runs)
    result["memories_missing"] = missing
    result["gateway_url"] = url
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="LoCoMo turn-level evidence recall through the memory API."
    )
    ap.add_argument(
        "paths",
        nargs="+",
        help="LoCoMo JSON file(s) (one conversation each, or the upstream locomo10.json list)",
    )
    ap.add_argument("--gateway-url", help="use this running gateway instead of starting one")
    ap.add_argument(
        "--api-key",
        default=os.environ.get("MEMGATE_API_KEY"),
        help="bearer key for a gateway with GATEWAY_API_KEYS set",
    )
    ap.add_argument("--json", dest="json_out", help="also write the results as JSON here")
    ap.add_argument("--top-k", type=int, default=25)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight while ingesting (conversations run in parallel, "
        "the turns of one conversation in order)",
    )
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--warmup", type=int, default=5, help="untimed searches before the run")
    ap.add_argument("--run-id", help="user ids are locomo-<run-id>-<conversation>")
    ap.add_argument("--keep", action="store_true", help="do not forget the users at the end")
    args = ap.parse_args(argv)
    if max(KS) > args.top_k:
        ap.error(f"--top-k must be at least {max(KS)}")

    # a SIGTERM (e.g. from `timeout`) still stops the processes this script started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    stack = None
    url = args.gateway_url
    try:
        if not url:
            stack = LocalStack()
            print("starting embedder and gateway ...", file=sys.stderr)
            url = stack.start()
            print(f"gateway ready at {url}", file=sys.stderr)
        result = asyncio.run(_amain(args, url.rstrip("/")))
    finally:
        if stack is not None:
            stack.stop()
    result["loadavg_start"] = loadavg_start
    result["command"] = "python -m bench.locomo_recall " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True
    )
    result["git"] = rev.stdout.strip()
    print(markdown(result))
    print(f"load average at start {loadavg_start}, at end {result['loadavg_end']}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
