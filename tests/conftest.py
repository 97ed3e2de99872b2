"""Shared fixtures: one real embedder per session; stand-in LLMs and gateways per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import Service
from tests.support.stack import start_embedder, start_gateway


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The real embedder with the real all-MiniLM-L6-v2 weights (about 8 s to load)."""
    service = start_embedder(tmp_path_factory.mktemp("embedder"))
    yield service
    service.terminate()


@pytest.fixture
def llm() -> Iterator[RunningServer]:
    with start_llm_server() as server:
        yield server


GatewayFactory = Callable[..., Service]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways (``python -m gateway``) with settings overrides; all stop at teardown."""
    started: list[Service] = []

    def start(llm_url: str, embedder_url: str, **extra: str) -> Service:
        data_dir = Path(extra.pop("data_dir", tmp_path / f"data{len(started)}"))
        service = start_gateway(data_dir, llm_url, embedder_url, **extra)
        started.append(service)
        return service

    yield start
    for service in started:
        service.terminate()


@pytest.fixture
def gateway(gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service) -> Service:
    return gateway_factory(llm.url, embedder.url)
