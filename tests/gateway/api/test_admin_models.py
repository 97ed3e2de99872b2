"""``/admin/models`` in process: registrations go through the shared store, and a store
that cannot be written is a 503 that changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.exceptions import RegistryUnavailable
from gateway.services import Services
from gateway.settings import Settings
from gateway.upstream.qdrant_registry import QdrantRegistry
from gateway.upstream.registry import Registration, SqliteRegistry

DEAD = "http://127.0.0.1:9/v1"
BODY = {"alias": "vl", "upstream_url": "http://127.0.0.1:9/v1", "model": "Qwen/VL"}


class DownRegistry:
    name = "down"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def all(self) -> list[Registration]:
        raise RegistryUnavailable("qdrant unreachable: ConnectError")

    async def put(self, registration: Registration) -> Registration:
        raise RegistryUnavailable("qdrant unreachable: ConnectError")

    async def delete(self, alias: str) -> bool:
        raise RegistryUnavailable("qdrant unreachable: ConnectError")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        llm_url=DEAD,
        embedder_url=DEAD,
        health_interval_s=60,
        registry_path=tmp_path / "shared" / "models.sqlite3",
        registry_sync_s=0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


def aliases(client: TestClient) -> set[str]:
    return {m["alias"] for m in client.get("/admin/models").json()["data"]}


def assert_unavailable(answer: Any) -> None:
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    error = answer.json()["error"]
    assert error["code"] == "registry_unavailable" and error["type"] == "service_unavailable"
    assert "qdrant unreachable" in error["message"]


def test_registrations_are_kept_in_the_configured_file(
    client: TestClient, settings: Settings
) -> None:
    created = client.post("/admin/models", json=BODY)
    assert created.status_code == 201 and created.json()["source"] == "registered"
    assert settings.registry_path is not None and settings.registry_path.exists()
    assert not (settings.data_dir / "models.sqlite3").exists()
    assert aliases(client) == {"vl"}


def test_a_store_that_cannot_be_written_is_503_and_changes_nothing(client: TestClient) -> None:
    assert client.post("/admin/models", json=BODY).status_code == 201
    services(client).registrations.registry = DownRegistry()

    assert_unavailable(client.post("/admin/models", json={**BODY, "alias": "new"}))
    assert_unavailable(client.post("/admin/models", json={**BODY, "model": "changed"}))
    assert_unavailable(client.delete("/admin/models/vl"))
    listing = {m["alias"]: m for m in client.get("/admin/models").json()["data"]}
    assert set(listing) == {"vl"} and listing["vl"]["model"] == "Qwen/VL"


def register_elsewhere(path: Path, alias: str) -> None:
    """What another gateway on this host does: write the shared file."""

    async def put() -> None:
        other = SqliteRegistry(path)
        await other.open()
        await other.put(Registration(alias, "http://127.0.0.1:9/v1", "m"))
        await other.close()

    asyncio.run(put())


def test_own_changes_catch_up_with_what_other_gateways_registered(
    client: TestClient, settings: Settings
) -> None:
    assert settings.registry_path is not None
    register_elsewhere(settings.registry_path, "theirs")
    assert aliases(client) == set()  # no periodic sync here (GATEWAY_REGISTRY_SYNC_S=0)
    assert client.post("/admin/models", json=BODY).status_code == 201
    assert aliases(client) == {"vl", "theirs"}

    register_elsewhere(settings.registry_path, "later")
    deleted = client.delete("/admin/models/later")  # in the store, not routed here yet
    assert deleted.json() == {"alias": "later", "deleted": True}
    assert client.delete("/admin/models/later").status_code == 404


def test_with_a_qdrant_server_registrations_live_in_its_models_collection(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        llm_url=DEAD,
        embedder_url=DEAD,
        health_interval_s=60,
        qdrant_url=":memory:",  # qdrant-client's local mode stands in for the server
        qdrant_collection="team",
    )
    with TestClient(create_app(settings)) as client:
        assert client.post("/admin/models", json=BODY).status_code == 201
        registry = services(client).registrations.registry
        assert isinstance(registry, QdrantRegistry) and registry.collection == "team_models"
        assert [r.alias for r in asyncio.run(registry.all())] == ["vl"]
    assert not (settings.data_dir / "models.sqlite3").exists()


@pytest.mark.parametrize(
    "alias",
    ["bad\nalias", "tab\there", "with space", "-leading-dash", "quote'd", "a" * 129, "nul\x00"],
)
def test_aliases_are_validated_at_registration(client: TestClient, alias: str) -> None:
    refused = client.post("/admin/models", json={**BODY, "alias": alias})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "alias"
    assert aliases(client) == set()


def test_an_upstream_key_that_no_header_can_carry_is_refused(client: TestClient) -> None:
    # Stored, it failed every request and the alias stayed "unavailable" for good.
    refused = client.post("/admin/models", json={**BODY, "api_key": "sk-abc\ndef"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "api_key"
    assert "sk-abc" not in refused.text
    assert aliases(client) == set()


def test_model_names_have_no_control_characters(client: TestClient) -> None:
    refused = client.post("/admin/models", json={**BODY, "model": "qwen\nINJECTED"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    for alias in ("Qwen/Qwen2.5-7B-Instruct", "llama3:8b", "qwen-vl-2b", "a.b_c+d@e"):
        assert client.post("/admin/models", json={**BODY, "alias": alias}).status_code == 201


def test_a_bad_alias_stored_before_validation_can_still_be_deleted(
    client: TestClient, settings: Settings
) -> None:
    assert settings.registry_path is not None
    register_elsewhere(settings.registry_path, "bad\nalias")
    register_elsewhere(settings.registry_path, "bad")
    assert client.post("/admin/models", json=BODY).status_code == 201  # syncs the store
    assert aliases(client) == {"vl", "bad\nalias", "bad"}
    # A path cannot carry the newline; it is never taken for another alias either.
    assert client.delete("/admin/models/bad%0A").status_code == 400
    assert client.delete("/admin/models/bad%0Aalias").status_code in (400, 404, 405)
    deleted = client.delete("/admin/models", params={"alias": "bad\nalias"})
    assert deleted.json() == {"alias": "bad\nalias", "deleted": True}
    assert aliases(client) == {"vl", "bad"}
    assert client.delete("/admin/models", params={"alias": "bad\nalias"}).status_code == 404


def test_deleting_with_a_repeated_alias_is_refused_and_deletes_neither(client: TestClient) -> None:
    for alias in ("one", "two"):
        assert client.post("/admin/models", json={**BODY, "alias": alias}).status_code == 201
    answer = client.delete("/admin/models?alias=one&alias=two")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "repeated_parameter"
    assert answer.json()["error"]["param"] == "alias"
    aliases = {m["alias"] for m in client.get("/admin/models").json()["data"]}
    assert {"one", "two"} <= aliases
