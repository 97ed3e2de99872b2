"""The gateway's metric families follow Prometheus naming, and registries never collide."""

from __future__ import annotations

from pathlib import Path

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.enums import BreakerState, EmbedderErrorKind, Health, ReplayOutcome, UpstreamOutcome
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from tests.monitoring.metric_rules import (
    check_exposition,
    check_family_names,
    check_label_names,
    exposition,
    families,
)


@pytest.fixture
def metrics() -> GatewayMetrics:
    m = GatewayMetrics(CollectorRegistry())
    m.init_upstream("primary")
    return m


def test_every_family_follows_the_naming_rules(metrics: GatewayMetrics) -> None:
    assert check_family_names(metrics.registry, "memgate_") == []
    assert check_exposition(exposition(metrics.registry)) == []
    assert check_label_names(vars(metrics).values()) == []
    # Every metric object is registered (check_label_names saw all of them).
    declared = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    assert len(declared) == len(families(metrics.registry)) > 15


def test_every_counter_is_exposed_with_total(metrics: GatewayMetrics) -> None:
    text = exposition(metrics.registry)
    counters = [f for f in families(metrics.registry) if f.type == "counter"]
    assert len(counters) >= 9
    for family in counters:
        assert f"# TYPE {family.name}_total counter" in text


def test_the_rules_catch_bad_names() -> None:
    """The checks above are not vacuous: each rule rejects a family that breaks it."""
    registry = CollectorRegistry()
    prometheus_client.Histogram("memgate_request_latency_ms", "Latency.", registry=registry)
    prometheus_client.Gauge("memgate_payload", "Request size in bytes.", registry=registry)
    prometheus_client.Counter(
        "memgate_chats", "Chats.", ["user_id", "api_key"], registry=registry
    ).labels("u", "k").inc()
    prometheus_client.Gauge("other_thing", "Not ours.", registry=registry)
    problems = "\n".join(check_family_names(registry, "memgate_"))
    assert "memgate_request_latency_ms: non-base unit" in problems
    assert "memgate_request_latency_ms: measures time" in problems
    assert "memgate_payload: measures bytes" in problems
    assert "label 'user_id'" in problems and "label 'api_key'" in problems
    assert "other_thing: not prefixed" in problems
    assert check_exposition("# TYPE a:b_total counter\na:b_total 1\n") == [
        "a:b_total: colon in exposed name"
    ]
    assert check_exposition("# TYPE memgate_c counter\nmemgate_c 1\n") == [
        "memgate_c: counter not exposed as <name>_total"
    ]
    assert check_exposition("# TYPE memgate_c_total counter\nmemgate_c 1\n") == [
        "memgate_c: sample of counter memgate_c_total named differently"
    ]


def test_known_label_values_exist_at_zero_before_anything_happens(
    metrics: GatewayMetrics,
) -> None:
    registry = metrics.registry

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    for outcome in ReplayOutcome:
        assert value("memgate_outbox_replays_total", outcome=outcome) == 0
    for kind in EmbedderErrorKind:
        assert value("memgate_embedder_client_errors_total", kind=kind) == 0
    for outcome in ("hit", "miss", "degraded"):
        assert value("memgate_memory_recalls_total", outcome=outcome) == 0
    for source in ("api", "chat"):
        for outcome in ("stored", "duplicate", "queued"):
            assert value("memgate_memory_writes_total", source=source, outcome=outcome) == 0
    for dependency in ("embedder", "vector_store"):
        assert value("memgate_dependency_ready", dependency=dependency) == 0
    # One upstream's series.
    for outcome in UpstreamOutcome:
        assert value("memgate_upstream_requests_total", upstream="primary", outcome=outcome) == 0
    assert value("memgate_upstream_retries_total", upstream="primary") == 0
    assert value("memgate_upstream_fallbacks_total", upstream="primary") == 0
    for kind in ("prompt", "completion"):
        assert value("memgate_upstream_tokens_total", upstream="primary", kind=kind) == 0
    assert value("memgate_upstream_request_duration_seconds_count", upstream="primary") == 0
    assert value("memgate_upstream_time_to_first_token_seconds_count", upstream="primary") == 0
    states = {s: value("memgate_upstream_state", upstream="primary", state=s) for s in Health}
    assert states == {"starting": 1, "healthy": 0, "unhealthy": 0}
    breaker = {
        s: value("memgate_upstream_breaker_state", upstream="primary", state=s)
        for s in BreakerState
    }
    assert breaker == {"closed": 1, "open": 0, "half_open": 0}


def test_init_upstream_is_idempotent_and_keeps_state(metrics: GatewayMetrics) -> None:
    metrics.set_upstream_state("primary", "healthy")
    metrics.upstream_retries.labels("primary").inc()
    metrics.init_upstream("primary")
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "memgate_upstream_state", {"upstream": "primary", "state": "healthy"}
        )
        == 1
    )
    assert registry.get_sample_value("memgate_upstream_retries_total", {"upstream": "primary"}) == 1


def test_a_removed_upstream_leaves_no_series_behind(metrics: GatewayMetrics) -> None:
    metrics.init_upstream("replica-2")
    metrics.upstream_requests.labels("replica-2", "success").inc()
    metrics.upstream_duration.labels("replica-2").observe(0.1)
    metrics.set_breaker_state("replica-2", "open")
    metrics.remove_upstream("replica-2")
    text = exposition(metrics.registry)
    assert 'upstream="replica-2"' not in text
    assert 'upstream="primary"' in text  # the others stay
    metrics.init_upstream("replica-2")  # registered again: fresh zero series
    assert (
        metrics.registry.get_sample_value(
            "memgate_upstream_requests_total", {"upstream": "replica-2", "outcome": "success"}
        )
        == 0
    )


def test_no_upstream_series_without_an_upstream() -> None:
    text = exposition(GatewayMetrics(CollectorRegistry()).registry)
    assert 'upstream="' not in text


def settings_for(tmp_path: Path, name: str) -> Settings:
    dead = "http://127.0.0.1:9/v1"
    return Settings(data_dir=tmp_path / name, llm_url=dead, embedder_url=dead, health_interval_s=60)


def test_two_apps_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    first_registry, second_registry = CollectorRegistry(), CollectorRegistry()
    first = create_app(settings_for(tmp_path, "a"), registry=first_registry)
    second = create_app(settings_for(tmp_path, "b"), registry=second_registry)
    # Built without a registry too: each gets a fresh one, never the global REGISTRY.
    create_app(settings_for(tmp_path, "c"))
    create_app(settings_for(tmp_path, "d"))
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not {n for n in global_names if n.startswith("memgate_")}

    with TestClient(first) as one, TestClient(second) as two:
        for _ in range(3):
            one.get("/livez")
        two.get("/livez")
        labels = {"route": "/livez", "method": "GET", "status": "200"}
        assert first_registry.get_sample_value("memgate_http_requests_total", labels) == 3
        assert second_registry.get_sample_value("memgate_http_requests_total", labels) == 1
        # Each app's /metrics serves its own registry.
        assert scraped(one.get("/metrics").text, "memgate_http_requests_total", labels) == 3
        assert scraped(two.get("/metrics").text, "memgate_http_requests_total", labels) == 1


def scraped(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
