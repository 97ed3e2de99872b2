"""The embedder's Prometheus metrics, on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from embedder.batcher import BatchStats

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class EmbedderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "embedder_requests", "Embedding requests, by HTTP status.", ["status"],
            registry=registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "embedder_request_duration_seconds", "Embedding request latency.",
            buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "embedder_batch_size", "Texts per encode call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "embedder_queue_wait_seconds", "Time a request waited before its batch ran.",
            buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.inference = Histogram(
            "embedder_inference_duration_seconds", "Time of one encode call.",
            buckets=_SECONDS, registry=registry,
        )  # fmt: skip
        self.inputs = Counter("embedder_inputs", "Texts embedded.", registry=registry)
        self.model_info = Gauge(
            "embedder_model_info", "The loaded model.", ["model", "dimension"], registry=registry
        )

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.inference.observe(stats.inference_s)
        for wait in stats.queue_waits:
            self.queue_wait.observe(wait)
