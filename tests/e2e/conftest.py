"""End-to-end fixtures: real processes shared per module (fresh user ids per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import Service, wait_until
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shared_llm() -> Iterator[RunningServer]:
    with start_llm_server() as server:
        yield server


@pytest.fixture
def upstream(shared_llm: RunningServer) -> RunningServer:
    shared_llm.reset()
    return shared_llm


@pytest.fixture(scope="module", params=["edge", "server"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def stack_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    shared_llm: RunningServer,
    embedder: Service,
    store_kind: str,
) -> Iterator[Service]:
    """A gateway on each store adapter: Qdrant Edge, and the server adapter (``:memory:``)."""
    extra = {"GATEWAY_QDRANT_URL": ":memory:"} if store_kind == "server" else {}
    data_dir: Path = tmp_path_factory.mktemp(f"gw-{store_kind}") / "data"
    service = start_gateway(data_dir, shared_llm.url, embedder.url, **extra)
    yield service
    service.terminate()


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def memories_of(gateway: Service, user_id: str, headers: dict[str, str] | None = None) -> list[str]:
    response = httpx.get(
        f"{gateway.url}/memories", params={"user_id": user_id}, headers=headers or {}
    )
    response.raise_for_status()
    return [m["memory"] for m in response.json()["results"]]


def wait_for_memories(
    gateway: Service, user_id: str, count: int, headers: dict[str, str] | None = None
) -> list[str]:
    """Chat stores memories after answering: wait until they are there."""
    wait_until(
        lambda: len(memories_of(gateway, user_id, headers)) >= count, 10, what="memories stored"
    )
    return memories_of(gateway, user_id, headers)
