"""The embedder's metric families follow Prometheus naming, on a registry of their own."""

from __future__ import annotations

import prometheus_client
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from embedder.app import create_app
from embedder.batcher import BatchStats
from embedder.metrics import EmbedderMetrics
from embedder.settings import EmbedderSettings
from harness.process import wait_until
from tests.embedder.fake_encoder import FakeEncoder
from tests.monitoring.metric_rules import (
    check_exposition,
    check_family_names,
    check_label_names,
    exposition,
)


def test_every_family_follows_the_naming_rules() -> None:
    registry = CollectorRegistry()
    metrics = EmbedderMetrics(registry)
    metrics.requests.labels("200").inc()
    metrics.model_info.labels("all-MiniLM-L6-v2", "384").set(1)
    assert check_family_names(registry, "embedder_") == []
    assert check_exposition(exposition(registry)) == []
    assert check_label_names(vars(metrics).values()) == []


def test_batches_are_observed() -> None:
    registry = CollectorRegistry()
    metrics = EmbedderMetrics(registry)
    metrics.observe_batch(BatchStats(size=3, inference_s=0.02, queue_waits=[0.001, 0.002, 0.003]))
    assert registry.get_sample_value("embedder_batch_size_sum") == 3
    assert registry.get_sample_value("embedder_inference_duration_seconds_count") == 1
    assert registry.get_sample_value("embedder_queue_wait_seconds_count") == 3


def test_two_apps_in_one_process_have_their_own_registries() -> None:
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    settings = EmbedderSettings()
    first = create_app(settings, registry=first_registry, load_encoder=lambda s: FakeEncoder())
    second = create_app(settings, registry=second_registry, load_encoder=lambda s: FakeEncoder())
    create_app(settings, load_encoder=lambda s: FakeEncoder())  # a fresh registry, not REGISTRY
    assert not [f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("embedder_")]
    with TestClient(first) as one, TestClient(second) as two:
        wait_until(lambda: one.get("/health").status_code == 200, 5)
        wait_until(lambda: two.get("/health").status_code == 200, 5)
        one.post("/v1/embeddings", json={"input": ["a", "b"]})
        assert first_registry.get_sample_value("embedder_requests_total", {"status": "200"}) == 1
        assert first_registry.get_sample_value("embedder_inputs_total") == 2
        assert (
            second_registry.get_sample_value("embedder_requests_total", {"status": "200"}) is None
        )
        assert "embedder_inputs_total 2.0" in one.get("/metrics").text
        assert "embedder_inputs_total 0.0" in two.get("/metrics").text
