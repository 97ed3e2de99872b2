"""A MemoryService with a real Qdrant Edge store and an embedder behind
httpx's MockTransport, for the unit tests of the memory package (the e2e
tests use the real embedder process)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.outbox import Outbox
from gateway.memory.records import NewMemory, Scope
from gateway.memory.service import MemoryService
from gateway.memory.store import VectorStore
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor

DIM = 8
ALICE = Scope("t", "alice")
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def vector(text: str) -> list[float]:
    """A unit vector per text, as the real embedder's (the model normalises)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b / 255 for b in digest[:DIM]]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


class Embedder:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0
        self.reject: str | None = None
        self.floats_only = False  # an embedder that ignores encoding_format
        self.priorities: list[int] = []
        self.inputs: list[str] = []  # every text embedded, in order
        self.seen: list[tuple[int, list[str]]] = []  # (priority, texts) of each call
        # While ``hold`` is set and not yet released, each call waits on it
        # (after setting ``held``): a write stopped between its reads and its store.
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()
        self.arrivals: asyncio.Queue[None] = asyncio.Queue()  # one item per call held

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        if self.hold is not None and not self.hold.is_set():
            self.held.set()
            self.arrivals.put_nowait(None)
            await self.hold.wait()
        return self.handle(request)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("refused", request=request)
        self.calls += 1
        body = json.loads(request.content)
        texts = body["input"]
        self.inputs += texts
        self.priorities.append(body.get("priority", 0))
        self.seen.append((body.get("priority", 0), texts))
        if any(self.reject and self.reject in t for t in texts):
            return httpx.Response(400, json={"error": {"message": "input too long"}})
        as_base64 = body.get("encoding_format") == "base64" and not self.floats_only
        data = [
            {"index": i, "embedding": encoded(vector(t)) if as_base64 else vector(t)}
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})


def encoded(floats: list[float]) -> str:
    return base64.b64encode(np.asarray(floats, dtype="<f4").tobytes()).decode()


class Harness:
    def __init__(self, tmp_path: Path, store: VectorStore | None = None) -> None:
        self.embedder = Embedder()
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self.embedder.handle_async))
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.client = EmbedderClient(self.http, "http://embedder/v1", DIM, self.metrics)
        # ``store``: one that several harnesses share, as gateways share a Qdrant server.
        self.store = store if store is not None else EdgeStore(tmp_path / "edge", DIM)
        self.outbox = Outbox(tmp_path / "outbox.sqlite3")
        self.embedder_monitor = Monitor("embedder", self.client.probe)
        self.store_monitor = Monitor("vector_store", self.store.ping)
        self.service = MemoryService(self.store, self.client, self.outbox, self.metrics,
                                     self.embedder_monitor, self.store_monitor)  # fmt: skip

    async def texts(self) -> list[str]:
        page, _ = await self.store.list(ALICE, 100, None)
        return sorted(r.text for r in page)


def outbox_rows(outbox: Outbox) -> int:
    """The outbox's rows on disk, whatever their state (waiting, held, stored
    and waiting for the store's flush)."""
    [(count,)] = outbox._execute("SELECT COUNT(*) FROM outbox")
    return int(count)


def memories(*texts: str) -> list[NewMemory]:
    return [NewMemory(t, WHEN) for t in texts]


@asynccontextmanager
async def opened_harness(
    tmp_path: Path, store: VectorStore | None = None
) -> AsyncIterator[Harness]:
    """A harness with its outbox and store open and both dependencies up."""
    harness = Harness(tmp_path, store)
    harness.outbox.open()
    await harness.store.open()
    harness.embedder_monitor.report_success()
    harness.store_monitor.report_success()
    try:
        yield harness
    finally:
        await harness.store.close()
        harness.outbox.close()
        await harness.http.aclose()
