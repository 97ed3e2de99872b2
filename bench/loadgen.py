"""An open-loop HTTP/1.1 load generator: fixed request rate, latency from the intended send time.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1/chat/completions \
        --body-file bodies.jsonl --rate 500 --duration 10 [--warmup 2] [--stream]

Why not wrk: Debian's wrk is closed-loop (each connection waits for its answer
before sending again), so at a given load it hides queueing delay
("coordinated omission"), and it cannot hold a fixed rate. This generator
schedules request i at ``t0 + i / rate`` whatever happened before, sends it on
an idle keep-alive connection (opening a new one when none is idle, up to
``--max-conns``; past that the request waits, and its wait counts), and
measures latency from the scheduled time. It is stdlib asyncio on raw
sockets (uvloop when importable): one ``write`` per request and a small
incremental response parser, so the generator itself stays far below the
rates it measures (about 15-20k requests/s on one core of the dev box).

For ``--stream`` requests it also records the time to the first body chunk
that carries an SSE ``data:`` line (time to first token, TTFT).

Prints one JSON object: offered and achieved rate, errors, latency and TTFT
percentiles in milliseconds (p50/p90/p95/p99/p99.9/max). Bodies come from a
JSON-lines file (one request body per line), used in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

try:  # optional: a faster event loop for the generator
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {k: None for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")}
    xs = sorted(values)
    n = len(xs)

    def pct(p: float) -> float:
        return xs[min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))]

    return {
        "p50": pct(50),
        "p90": pct(90),
        "p95": pct(95),
        "p99": pct(99),
        "p999": pct(99.9),
        "max": xs[-1],
        "mean": sum(xs) / n,
    }


@dataclass
class Pending:
    scheduled: float
    record: bool
    first_data: float | None = None
    done: asyncio.Future[int] | None = None


class Client(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.current: Pending | None = None
        self.status = 0
        self.head_done = False
        self.length: int | None = None
        self.chunked = False
        self.body_seen = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)
        if self.current is not None and self.current.done and not self.current.done.done():
            self.current.done.set_result(-1)
        self.current = None

    def send(self, payload: bytes, pending: Pending) -> None:
        self.current = pending
        self.buf.clear()
        self.status, self.head_done, self.length = 0, False, None
        self.chunked, self.body_seen, self.close_after = False, 0, False
        self.transport.write(payload)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        now = time.perf_counter()
        cur = self.current
        if cur is None:
            return
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    self.length = int(value.strip())
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self.chunked = True
                elif name == "connection" and value.strip().lower() == "close":
                    self.close_after = True
            del self.buf[: end + 4]
            self.head_done = True
        if cur.first_data is None and b"data:" in self.buf:
            cur.first_data = now
        if self.chunked:
            if not self._chunked_complete():
                return
        elif self.length is not None:
            if len(self.buf) < self.length:
                return
        else:
            return  # read until close (not used by the servers measured)
        self._finish(self.status)

    def _chunked_complete(self) -> bool:
        buf, pos = self.buf, self.body_seen
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self.body_seen = pos
                return False
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                return buf.find(b"\r\n\r\n", eol) >= 0 or buf.endswith(b"0\r\n\r\n")
            if len(buf) < eol + 2 + size + 2:
                self.body_seen = pos
                return False
            pos = eol + 2 + size + 2

    def _finish(self, status: int) -> None:
        cur, self.current = self.current, None
        if self.close_after and self.transport is not None:
            self.transport.close()
        else:
            self.pool.idle(self)
        if cur is not None and cur.done is not None and not cur.done.done():
            cur.done.set_result(status)


class Pool:
    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port, self.max_conns = host, port, max_conns
        self.free: collections.deque[Client] = collections.deque()
        self.count = 0
        self.waiters: collections.deque[asyncio.Future[Client]] = collections.deque()
        self.connects = 0

    async def get(self) -> Client:
        if self.free:
            return self.free.pop()
        if self.count < self.max_conns:
            self.count += 1
            self.connects += 1
            loop = asyncio.get_running_loop()
            try:
                _, client = await loop.create_connection(lambda: Client(self), self.host, self.port)
            except OSError:
                self.count -= 1
                raise
            return client
        fut: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return await fut

    def idle(self, client: Client) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(client)
                return
        self.free.append(client)

    def lost(self, client: Client) -> None:
        self.count -= 1
        with contextlib.suppress(ValueError):
            self.free.remove(client)


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    ok: int = 0
    sent: int = 0
    first_done: float = 0.0
    last_done: float = 0.0


async def one(pool: Pool, payload: bytes, pending: Pending, res: Results, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        client = await asyncio.wait_for(pool.get(), limit_s)
    except (OSError, TimeoutError) as exc:
        if pending.record:
            res.errors[type(exc).__name__] += 1
        return
    pending.done = loop.create_future()
    sent = time.perf_counter()
    client.send(payload, pending)
    try:
        status = await asyncio.wait_for(pending.done, limit_s)
    except TimeoutError:
        if client.transport is not None:
            client.transport.close()
        if pending.record:
            res.errors["timeout"] += 1
        return
    end = time.perf_counter()
    if not pending.record:
        return
    if status != 200:
        res.errors[f"http_{status}"] += 1
        return
    res.ok += 1
    res.latencies.append((end - pending.scheduled) * 1000)
    res.service.append((end - sent) * 1000)
    if pending.first_data is not None:
        res.ttfts.append((pending.first_data - pending.scheduled) * 1000)
    if not res.first_done:
        res.first_done = end
    res.last_done = end


def build_requests(url: str, bodies: list[bytes], headers: list[str]) -> list[bytes]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc
    extra = "".join(f"{h}\r\n" for h in headers)
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n{extra}\r\n"
        ).encode("latin-1")
        + b
        for b in bodies
    ]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bodies = [line.strip().encode() for line in args.body_lines if line.strip()]
    if args.stream:
        bodies = [json.dumps({**json.loads(b), "stream": True}).encode() for b in bodies]
    payloads = build_requests(args.url, bodies, args.header or [])
    pool = Pool(host, port, args.max_conns)
    res = Results()
    tasks: set[asyncio.Task[None]] = set()
    interval = 1.0 / args.rate
    warm_n = int(args.warmup * args.rate)
    total = warm_n + int(args.duration * args.rate)
    t0 = time.perf_counter() + 0.05
    late = 0
    measure_start = t0 + warm_n * interval
    for i in range(total):
        scheduled = t0 + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1
        record = i >= warm_n
        if record:
            res.sent += 1
        pending = Pending(scheduled, record)
        task = asyncio.create_task(
            one(pool, payloads[i % len(payloads)], pending, res, args.timeout)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    send_end = time.perf_counter()
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    span = max(1e-9, send_end - measure_start)
    done_span = max(1e-9, (res.last_done or send_end) - measure_start)
    return {
        "url": args.url,
        "stream": args.stream,
        "offered_rps": args.rate,
        "duration_s": args.duration,
        "sent": res.sent,
        "ok": res.ok,
        "errors": dict(res.errors),
        "error_count": sum(res.errors.values()),
        "achieved_rps": res.ok / done_span,
        "send_rps": res.sent / span,
        "generator_late_sends": late,
        "connections_opened": pool.connects,
        "latency_ms": percentiles(res.latencies),
        "service_ms": percentiles(res.service),
        "ttft_ms": percentiles(res.ttfts) if args.stream else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True, help="JSON lines, one request body per line")
    p.add_argument("--rate", type=float, required=True, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds sent first, not measured")
    p.add_argument("--stream", action="store_true", help="set stream=true in every body")
    p.add_argument("--max-conns", type=int, default=256)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--header", action="append", help="extra 'Name: value' header")
    args = p.parse_args(argv)
    with open(args.body_file, encoding="utf-8") as f:
        args.body_lines = f.read().splitlines()
    if uvloop is not None:
        uvloop.install()
    out = asyncio.run(run(args))
    out["event_loop"] = "uvloop" if uvloop is not None else "asyncio"
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
