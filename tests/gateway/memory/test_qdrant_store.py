"""The Qdrant server adapter when its server is not there at start: it opens its
collections once the server answers, instead of stopping the gateway."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from qdrant_client import AsyncQdrantClient

from gateway.exceptions import DimensionMismatch, StoreUnavailable
from gateway.memory.qdrant_store import PAYLOAD_INDEXES, QdrantServerStore
from gateway.memory.records import NewMemory, Scope, memory_id
from gateway.memory.sparse import Sparse
from gateway.memory.store import PointVectors, QueryVectors, StoredPoint

DIM = 4
ALICE = Scope("acme", "alice")
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


class SwitchedServer:
    """A local-mode client behind a switch: while ``down``, every call fails as
    a refused connection does."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client
        self.down = True
        self.calls_while_down = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name == "close" or not self.down:
            return method

        async def refused(*args: Any, **kwargs: Any) -> Any:
            self.calls_while_down += 1
            raise httpx.ConnectError("connection refused")

        return refused


def store_behind(server: SwitchedServer, dim: int = DIM) -> QdrantServerStore:
    store = QdrantServerStore(":memory:", None, "memories", dim)
    store._client = server  # type: ignore[assignment]
    return store


def a_point(text: str) -> StoredPoint:
    unit = [1.0, 0.0, 0.0, 0.0]
    vectors = PointVectors(unit, unit, Sparse([], []), Sparse([], []))
    return StoredPoint(memory_id(ALICE, text), vectors, NewMemory(text, WHEN), written_at=1)


QUERY = QueryVectors([1.0, 0.0, 0.0, 0.0], Sparse([], []))


async def test_a_server_down_at_start_is_opened_once_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = SwitchedServer(AsyncQdrantClient(location=":memory:"))
    store = store_behind(server)
    with caplog.at_level(logging.WARNING, "gateway.memory"):
        await store.open()  # does not raise: the gateway starts
    assert "chat goes on without memory" in caplog.text

    for call in (store.ping(), store.search(ALICE, QUERY, 5), store.upsert(ALICE, [a_point("x")])):
        with pytest.raises(StoreUnavailable, match="qdrant unreachable"):
            await call
    tries = server.calls_while_down

    server.down = False
    await store.ping()  # the monitor's probe opens the collections
    assert await server.client.collection_exists("memories")
    assert await server.client.collection_exists("memories_forgets")
    await store.upsert(ALICE, [a_point("the blue bicycle")])
    [hit] = await store.search(ALICE, QUERY, 5)
    assert hit.text == "the blue bicycle"
    assert tries >= 3  # each call before tried the server, none was kept from it
    await store.close()


async def test_a_collection_of_another_size_stops_the_start() -> None:
    client = AsyncQdrantClient(location=":memory:")
    first = store_behind(SwitchedServer(client))
    first._client.down = False  # type: ignore[attr-defined]
    await first.open()
    server = SwitchedServer(client)
    server.down = False
    with pytest.raises(DimensionMismatch, match="re-embed"):
        await store_behind(server, dim=8).open()


async def test_a_collection_of_another_size_found_later_is_the_stores_outage() -> None:
    client = AsyncQdrantClient(location=":memory:")
    server = SwitchedServer(client)
    late = store_behind(server, dim=8)
    await late.open()  # down: left for later
    server.down = False
    other = SwitchedServer(client)
    other.down = False
    await store_behind(other).open()  # meanwhile someone made it with 4 dimensions
    with pytest.raises(StoreUnavailable, match="this gateway needs"):
        await late.ping()
    with pytest.raises(StoreUnavailable, match="this gateway needs"):
        await late.search(ALICE, QUERY, 5)


class IndexingServer:
    """A local-mode client that keeps the payload indexes a server would (local mode
    keeps none) and can go away after making some of them."""

    def __init__(self, client: AsyncQdrantClient, fail_after: int | None = None) -> None:
        self.client = client
        self.fail_after = fail_after
        self.made: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def create_payload_index(self, collection: str, field: str, **_: Any) -> None:
        if self.fail_after is not None and len(self.made) >= self.fail_after:
            raise httpx.ConnectError("connection refused")
        self.made.append(field)

    async def get_collection(self, collection: str) -> Any:
        info = await self.client.get_collection(collection)
        return info.model_copy(update={"payload_schema": {f: None for f in self.made}})


async def test_indexes_missing_after_a_start_cut_short_are_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = IndexingServer(AsyncQdrantClient(location=":memory:"), fail_after=1)
    store = QdrantServerStore(":memory:", None, "memories", DIM)
    store._client = server  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, "gateway.memory"):
        await store.open()  # the server went away after the collection and one index
    assert await server.client.collection_exists("memories") and server.made == ["tenant"]

    server.fail_after = None
    await store.ping()  # back: the collection is there, so only its indexes are left
    assert sorted(server.made) == sorted(field for field, _ in PAYLOAD_INDEXES)
    assert server.made.count("tenant") == 1

    again = QdrantServerStore(":memory:", None, "memories", DIM)
    again._client = server  # type: ignore[assignment]
    await again.open()  # a later start finds them all and makes none twice
    assert len(server.made) == len(PAYLOAD_INDEXES)
