"""Both stores of registered models keep the same contract: put, all, replace, delete."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from gateway.exceptions import RegistryUnavailable
from gateway.upstream.qdrant_registry import QdrantRegistry, point_id
from gateway.upstream.registry import (
    ModelRegistry,
    Registration,
    SqliteRegistry,
)
from harness.process import free_port


@pytest.fixture(params=["sqlite", "qdrant"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ModelRegistry]:
    store: ModelRegistry
    if request.param == "sqlite":
        store = SqliteRegistry(tmp_path / "models.sqlite3")
    else:
        store = QdrantRegistry(AsyncQdrantClient(location=":memory:"), "memgate_memories_models")
    await store.open()
    yield store
    await store.close()


async def test_put_all_replace_delete(registry: ModelRegistry) -> None:
    assert await registry.all() == []
    first = await registry.put(Registration("vl", "http://x:8000/v1", "Qwen/VL", "k"))
    await registry.put(Registration("a-model", "http://y:8000/v1", "m"))
    assert first.registered_at > 0  # stamped by the store
    listed = await registry.all()
    assert [r.alias for r in listed] == ["a-model", "vl"]
    assert listed[1] == first

    replaced = await registry.put(Registration("vl", "http://z:8000/v1", "Qwen/VL-2"))
    [_, vl] = await registry.all()
    assert vl == replaced
    assert (vl.upstream_url, vl.model, vl.api_key) == ("http://z:8000/v1", "Qwen/VL-2", None)

    assert await registry.delete("vl") is True
    assert await registry.delete("vl") is False
    assert [r.alias for r in await registry.all()] == ["a-model"]


async def test_many_registrations_are_all_read(registry: ModelRegistry) -> None:
    aliases = [f"m-{i:03d}" for i in range(300)]  # more than one page of a Qdrant scroll
    for alias in aliases:
        await registry.put(Registration(alias, "http://x/v1", "m"))
    assert [r.alias for r in await registry.all()] == aliases


async def test_sqlite_persists_in_files_only_its_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "models.sqlite3"
    registry = SqliteRegistry(path)
    await registry.open()
    await registry.put(Registration("vl", "http://x:8000/v1", "Qwen/VL", "secret-key"))
    written = [p for p in path.parent.iterdir() if p.name.startswith("models.sqlite3")]
    assert path in written and len(written) >= 2  # the database and its WAL
    for file in written:
        assert file.stat().st_mode & 0o077 == 0, file
    await registry.close()

    again = SqliteRegistry(path)
    await again.open()
    [only] = await again.all()
    assert (only.alias, only.api_key) == ("vl", "secret-key")
    await again.close()
    with pytest.raises(RegistryUnavailable, match="closed"):
        await again.all()


async def test_two_sqlite_registries_share_one_file(tmp_path: Path) -> None:
    one, two = SqliteRegistry(tmp_path / "m.sqlite3"), SqliteRegistry(tmp_path / "m.sqlite3")
    await one.open()
    await two.open()
    await one.put(Registration("vl", "http://x/v1", "m"))
    assert [r.alias for r in await two.all()] == ["vl"]
    assert await two.delete("vl")
    assert await one.all() == []
    await one.close()
    await two.close()


async def test_qdrant_points_are_named_by_their_alias() -> None:
    client = AsyncQdrantClient(location=":memory:")
    registry = QdrantRegistry(client, "c_models")
    await registry.put(Registration("vl", "http://x/v1", "m", "k"))
    [point] = await client.retrieve("c_models", [point_id("vl")])
    assert point.payload is not None and point.payload["alias"] == "vl"
    assert point.payload["api_key"] == "k"
    assert uuid.UUID(point_id("vl")).version == 5 and point_id("vl") != point_id("vl2")
    await registry.close()


async def test_qdrant_ignores_points_that_are_not_registrations() -> None:
    from qdrant_client import models

    client = AsyncQdrantClient(location=":memory:")
    registry = QdrantRegistry(client, "c_models")
    await registry.put(Registration("vl", "http://x/v1", "m"))
    stray = models.PointStruct(id=str(uuid.uuid4()), vector=[1.0], payload={"note": "x"})
    await client.upsert("c_models", [stray])
    assert [r.alias for r in await registry.all()] == ["vl"]
    await registry.close()


async def test_an_unreachable_qdrant_is_registry_unavailable() -> None:
    client = AsyncQdrantClient(
        url=f"http://127.0.0.1:{free_port()}", timeout=1, check_compatibility=False
    )
    registry = QdrantRegistry(client, "c_models")
    await registry.open()  # no I/O: a Qdrant that is down must not stop the gateway's start
    with pytest.raises(RegistryUnavailable, match="qdrant unreachable"):
        await registry.all()
    with pytest.raises(RegistryUnavailable, match="qdrant unreachable"):
        await registry.put(Registration("vl", "http://x/v1", "m"))
    with pytest.raises(RegistryUnavailable, match="qdrant unreachable"):
        await registry.delete("vl")
    await registry.close()
