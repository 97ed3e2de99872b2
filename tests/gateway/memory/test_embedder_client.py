"""EmbedderClient against a real socket: a keep-alive connection the server drops.

The server answers the first request on each connection (keeping it alive)
and closes the connection without a word when a second request arrives on
it: what a client sees when the server's idle timeout fires just as the
client reuses the connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import prometheus_client
import pytest

from gateway.memory.embedder_client import EmbedderClient, EmbedderUnavailable
from gateway.metrics import GatewayMetrics
from gateway.monitor import ProbeFailed

DIM = 4


@dataclass
class DroppingServer:
    connections: int = 0
    answered: list[str] = field(default_factory=list)
    drop_reused: bool = True

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if served and self.drop_reused:
                    return  # closed without an answer
                path = head.split(b" ", 2)[1].decode()
                length = _content_length(head)
                body = json.loads(await reader.readexactly(length)) if length else {}
                writer.write(_answer(path, body))
                await writer.drain()
                self.answered.append(path)
                served += 1
        except asyncio.IncompleteReadError:
            pass  # the client closed the connection
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _answer(path: str, body: dict[str, object]) -> bytes:
    if path.endswith("/health"):
        payload: dict[str, object] = {"status": "ok", "dimension": DIM}
    else:
        texts = body["input"]
        assert isinstance(texts, list)
        vector = base64.b64encode(bytes(4 * DIM)).decode()  # DIM float32 zeros
        payload = {"data": [{"index": i, "embedding": vector} for i in range(len(texts))]}
    data = json.dumps(payload).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


@pytest.fixture
async def served() -> AsyncIterator[tuple[DroppingServer, EmbedderClient]]:
    server = DroppingServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    async with listener, httpx.AsyncClient() as http:
        yield server, EmbedderClient(http, f"http://127.0.0.1:{port}/v1", DIM, metrics)


async def test_a_dropped_keepalive_connection_is_retried_on_a_fresh_one(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    for _ in range(3):
        assert await client.embed(["a", "b"]) == [[0.0] * DIM, [0.0] * DIM]
    assert server.answered == ["/v1/embeddings"] * 3
    assert server.connections >= 3  # each later call found its pooled connection dropped


async def test_the_health_probe_survives_a_dropped_connection(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    await client.probe()
    await client.probe()  # raises ProbeFailed without the retry
    assert server.answered == ["/health", "/health"]


async def test_a_server_that_never_answers_is_still_unavailable() -> None:
    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    async with listener, httpx.AsyncClient() as http:
        client = EmbedderClient(http, f"http://127.0.0.1:{port}/v1", DIM, metrics)
        with pytest.raises(EmbedderUnavailable):
            await client.embed(["a"])
        with pytest.raises(ProbeFailed):
            await client.probe()
