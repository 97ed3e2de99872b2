"""The one index of replicas: upstreams come and go whole, with their monitors and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.replica import Upstream
from gateway.upstream.replicas import Replicas


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    async with UpstreamHTTP() as client:
        yield client


def series(registry: CollectorRegistry, upstream: str) -> int:
    """How many samples name ``upstream``."""
    return sum(
        1
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("upstream") == upstream
    )


async def test_upstreams_are_indexed_by_group_and_replicas_by_name(http: UpstreamHTTP) -> None:
    replicas = Replicas(GatewayMetrics(CollectorRegistry()), health_interval_s=60)
    a0, a1 = (Upstream(f"a-{i}", f"http://a{i}/v1", http, group="a") for i in range(2))
    b = Upstream("b", "http://user:secret@b/v1", http)
    replicas.add("a", [a0, a1])
    replicas.add("b", [b])
    assert list(replicas) == [a0, a1, b]
    assert replicas.group("a") == (a0, a1) and replicas.group("nope") == ()
    assert "a" in replicas and "a-0" not in replicas  # groups, not replicas
    assert replicas.get("a-1") is a1 and replicas.get("a") is None
    assert all(replica.monitor is not None for replica in replicas)
    described = replicas.describe()
    assert list(described) == ["a-0", "a-1", "b"]
    assert described["b"]["url"] == "http://***@b/v1" and described["a-1"]["upstream"] == "a"
    assert replicas.status() == "starting"  # nothing probed yet


async def test_a_taken_name_adds_nothing(http: UpstreamHTTP) -> None:
    replicas = Replicas(GatewayMetrics(CollectorRegistry()), health_interval_s=60)
    replicas.add("a", [Upstream("a", "http://a/v1", http)])
    with pytest.raises(ValueError, match="exists already"):
        replicas.add("a", [Upstream("a-2", "http://a2/v1", http)])
    with pytest.raises(ValueError, match="exists already"):  # a replica of another upstream
        replicas.add("b", [Upstream("b", "http://b/v1", http), Upstream("a", "http://x/v1", http)])
    assert [replica.name for replica in replicas] == ["a"] and "b" not in replicas


async def test_removing_an_upstream_drops_its_replicas_and_their_metrics(
    http: UpstreamHTTP,
) -> None:
    registry = CollectorRegistry()
    replicas = Replicas(GatewayMetrics(registry), health_interval_s=60)
    replicas.add("a", [Upstream("a", "http://a/v1", http)])
    replicas.add("b", [Upstream("b", "http://b/v1", http)])
    assert series(registry, "a") > 0
    await replicas.remove("a")
    await replicas.remove("never-added")
    assert [replica.name for replica in replicas] == ["b"]
    assert series(registry, "a") == 0 and series(registry, "b") > 0
