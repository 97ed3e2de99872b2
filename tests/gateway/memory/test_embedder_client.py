"""EmbedderClient against a real socket whose server drops reused connections."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import prometheus_client
import pytest

from gateway.exceptions import EmbedderUnavailable
from gateway.memory.embedder_client import EmbedderClient
from gateway.metrics import GatewayMetrics
from gateway.monitor import ProbeFailed
from tests.support.dropping_server import DroppingServer, Json, dropping_server

DIM = 4
ZEROS = base64.b64encode(bytes(4 * DIM)).decode()  # DIM float32 zeros


def embedder(path: str, body: Json) -> Json:
    if path.endswith("/health"):
        return {"status": "ok", "dimension": DIM}
    return {"data": [{"index": i, "embedding": ZEROS} for i in range(len(body["input"]))]}


def client_of(server: DroppingServer, http: httpx.AsyncClient) -> EmbedderClient:
    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    return EmbedderClient(http, f"{server.url}/v1", DIM, metrics)


@pytest.fixture
async def served() -> AsyncIterator[tuple[DroppingServer, EmbedderClient]]:
    async with dropping_server(embedder) as server, httpx.AsyncClient() as http:
        yield server, client_of(server, http)


async def test_a_dropped_keepalive_connection_is_retried_on_a_fresh_one(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    for _ in range(3):
        assert await client.embed(["a", "b"]) == [[0.0] * DIM, [0.0] * DIM]
    assert server.answered == ["/v1/embeddings"] * 3
    assert server.connections == 3  # one per answer; each later call was first dropped


async def test_the_health_probe_survives_a_dropped_connection(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    await client.probe()
    await client.probe()  # raises ProbeFailed without the resend
    assert server.answered == ["/health", "/health"]


async def test_a_server_that_never_answers_is_still_unavailable() -> None:
    async with (
        dropping_server(embedder, drop_every_request=True) as server,
        httpx.AsyncClient() as http,
    ):
        client = client_of(server, http)
        with pytest.raises(EmbedderUnavailable):
            await client.embed(["a"])
        with pytest.raises(ProbeFailed):
            await client.probe()
        assert server.connections == 4  # each call sent twice, no more


def test_large_calls_are_cut_into_bounded_parts() -> None:
    from gateway.memory.embedder_client import PART_CHARS, PART_TEXTS, parts

    texts = [str(i) * 4000 for i in range(10)] * 26  # 260 texts of 4,000 characters
    cut = parts(texts)
    assert [t for part in cut for t in part] == texts  # in order, nothing lost
    assert all(len(p) <= PART_TEXTS and sum(map(len, p)) <= PART_CHARS for p in cut)
    assert parts(["x" * 100_000]) == [["x" * 100_000]]  # one text of any size still goes
