"""CPU per request of the HTTP clients the gateway could forward chat requests with.

    .venv/bin/python -m bench.http_clients [--requests 3000] [--rounds 3]

Starts the stand-in LLM (tests/fakes/llm_server.py) on CPU 1 and, in this
process pinned to CPU 0 on uvloop as the gateway runs, sends the same chat
request one at a time over a kept-alive connection with each client in turn,
plain and streaming (the body read to its end). Reported: the client process's
CPU time (user + system) per request and the wall time per request, medians
over rounds that interleave the clients. Clients:

  httpx         httpx.AsyncClient, ``send(stream=True)``, as the gateway used it before
  httpcore      httpcore's pool alone (what httpx sits on; anyio below it)
  aiohttp       aiohttp.ClientSession
  aiohttp-env   the same with ``trust_env=True`` (proxies and ~/.netrc looked up per request)
  memgate       gateway.upstream.http.UpstreamHTTP, aiohttp behind the gateway's own
                surface: what the gateway ships

Writes bench/results/http_clients.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpcore
import httpx
import uvloop

from bench import procs
from bench.procs import WORK
from gateway.upstream.http import UpstreamHTTP, timeouts_for

Send = Callable[[bytes], Awaitable[int]]
HEADERS = {"Content-Type": "application/json"}


def body(stream: bool) -> bytes:
    chat = {"model": "fake", "messages": [{"role": "user", "content": "hello there, how are you"}]}
    return json.dumps({**chat, "stream": stream}).encode()


async def clients(url: str) -> tuple[dict[str, Send], Callable[[], Awaitable[None]]]:
    hx = httpx.AsyncClient()
    core = httpcore.AsyncConnectionPool()
    aio = aiohttp.ClientSession()
    aio_env = aiohttp.ClientSession(trust_env=True)
    ours = UpstreamHTTP()
    limits = timeouts_for(read_s=30.0, connect_s=5.0)
    core_headers = [(b"content-type", b"application/json"), (b"host", b"upstream")]

    async def via_httpx(content: bytes) -> int:
        reply = await hx.send(hx.build_request("POST", url, content=content, headers=HEADERS),
                              stream=True)  # fmt: skip
        n = sum([len(c) async for c in reply.aiter_bytes()])
        await reply.aclose()
        return n

    async def via_httpcore(content: bytes) -> int:
        async with core.stream("POST", url, headers=core_headers, content=content) as reply:
            return sum([len(c) async for c in reply.aiter_stream()])

    async def via_aiohttp(content: bytes) -> int:
        async with aio.post(url, data=content, headers=HEADERS) as reply:
            return sum([len(c) async for c in reply.content.iter_any()])

    async def via_aiohttp_env(content: bytes) -> int:
        async with aio_env.post(url, data=content, headers=HEADERS) as reply:
            return sum([len(c) async for c in reply.content.iter_any()])

    async def via_memgate(content: bytes) -> int:
        reply = await ours.request("POST", url, body=content, headers=HEADERS, timeouts=limits)
        n = sum([len(c) async for c in reply.aiter_bytes()])
        await reply.aclose()
        return n

    async def close() -> None:
        await hx.aclose()
        await core.aclose()
        await aio.close()
        await aio_env.close()
        await ours.aclose()

    sends = {"httpx": via_httpx, "httpcore": via_httpcore, "aiohttp": via_aiohttp,
             "aiohttp-env": via_aiohttp_env, "memgate": via_memgate}  # fmt: skip
    return sends, close


async def measure(send: Send, content: bytes, n: int) -> tuple[float, float]:
    """(CPU us, wall us) per request."""
    if await send(content) <= 0:
        raise RuntimeError("empty answer")
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await send(content)
    return (1e6 * (time.process_time() - cpu) / n, 1e6 * (time.perf_counter() - wall) / n)


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    sends, close = await clients(url)
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        for send in sends.values():  # warm every pool and code path
            for stream in (False, True):
                await measure(send, body(stream), 200)
        for _ in range(args.rounds):
            for name, send in sends.items():
                for stream in (False, True):
                    key = f"{name}/{'stream' if stream else 'plain'}"
                    samples.setdefault(key, []).append(
                        await measure(send, body(stream), args.requests)
                    )
    finally:
        await close()
    return {
        key: {
            "cpu_us": statistics.median(c for c, _ in values),
            "wall_us": statistics.median(w for _, w in values),
            "rounds": [list(v) for v in values],
        }
        for key, values in samples.items()
    }


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# HTTP clients: CPU per forwarded request",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; load average at start "
        f"{data['loadavg_start']}, at end {data['loadavg_end']}; git {data['git']}.",
        f"Command: `{data['command']}`. One connection, requests one at a time, client on "
        "CPU 0 (uvloop), stand-in LLM on CPU 1; medians over rounds.",
        "",
        "| client | kind | CPU µs/request | CPU vs httpx | wall µs/request |",
        "|---|---|---|---|---|",
    ]
    results = data["results"]
    for key, r in results.items():
        name, kind = key.split("/")
        base = results[f"httpx/{kind}"]["cpu_us"]
        lines.append(f"| {name} | {kind} | {r['cpu_us']:.0f} | {r['cpu_us'] / base:.2f} | "
                     f"{r['wall_us']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=procs.RESULTS / "http_clients.json")
    args = p.parse_args()
    procs.exit_on_sigterm()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    logs = Path(tempfile.mkdtemp(prefix="clients-", dir=WORK)) / "logs"
    llm = procs.start_fake_llm(logs, "1")
    data: dict[str, Any] = {
        "machine": procs.machine_info(),
        "git": procs.git_rev(),
        "loadavg_start": procs.loadavg(),
        "command": "python -m bench.http_clients " + " ".join(sys.argv[1:]),
    }
    try:
        data["results"] = uvloop.run(run(llm.base_url + "/v1/chat/completions", args))
    finally:
        llm.terminate()
    procs.save_results(args.out, data, markdown)


if __name__ == "__main__":
    main()
