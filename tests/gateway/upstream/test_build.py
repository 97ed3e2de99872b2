"""The router built from the environment and GATEWAY_CONFIG."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.enums import RouteSource
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.upstream.build import build_router
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.replicas import Replicas
from gateway.upstream.router import FALLBACK, PRIMARY


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    async with UpstreamHTTP() as client:
        yield client


def replicas() -> Replicas:
    return Replicas(GatewayMetrics(CollectorRegistry()), health_interval_s=60)


async def test_the_primary_alone_without_a_fallback_or_a_file(
    tmp_path: Path, http: UpstreamHTTP
) -> None:
    index = replicas()
    router = build_router(Settings(data_dir=tmp_path, llm_url="http://vllm:8000/v1/"), http, index)
    assert [(r.name, r.base_url) for r in index] == [(PRIMARY, "http://vllm:8000/v1")]
    assert FALLBACK not in index and not router.aliases


async def test_the_file_adds_upstreams_with_their_replicas_and_aliases(
    tmp_path: Path, http: UpstreamHTTP
) -> None:
    config = tmp_path / "upstreams.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: qwen\n"
        "    urls: [http://a/v1, http://b/v1]\n"
        "    models: [{alias: fast, model: Qwen/Qwen2.5-7B, fallback: primary}]\n"
    )
    settings = Settings(
        data_dir=tmp_path,
        llm_url="http://vllm:8000/v1",
        fallback_llm_url="https://cloud/v1",
        fallback_llm_model="gpt-mini",
        config=config,
    )
    index = replicas()
    router = build_router(settings, http, index)
    assert [r.name for r in index] == [PRIMARY, FALLBACK, "qwen-0", "qwen-1"]
    assert {r.group for r in index.group("qwen")} == {"qwen"}
    route = router.aliases["fast"]
    assert (route.upstream, route.model, route.fallback) == ("qwen", "Qwen/Qwen2.5-7B", PRIMARY)
    assert route.source == RouteSource.CONFIG
    assert [t.upstream.group for t in router.resolve("fast")] == ["qwen", "qwen", PRIMARY]
