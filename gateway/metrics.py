"""The gateway's Prometheus metrics, built on a registry passed in.

Label values are bounded: routes are templates, upstreams are configured names,
states and outcomes are the enums of gateway.enums. Never a user id, tenant, key
or message. Each family's known values get a zero series up front (from the
enums), so dashboards show 0 (not "no data") until the first event, and rate()
has a starting point when it happens.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.enums import (
    BreakerState,
    Dependency,
    EmbedderErrorKind,
    Health,
    RecallOutcome,
    ReplayOutcome,
    TokenKind,
    UpstreamOutcome,
    WriteOutcome,
    WriteSource,
)

# Latency buckets from sub-millisecond (gateway overhead) to minutes (long generations).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GatewayMetrics:
    """All metric families of one gateway app, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "memgate"
        self.http_requests = Counter(
            f"{p}_http_requests", "HTTP requests answered.",
            ["route", "method", "status"], registry=registry,
        )  # fmt: skip
        self.http_duration = Histogram(
            f"{p}_http_request_duration_seconds", "HTTP request latency, to the last byte.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.http_in_flight = Gauge(
            f"{p}_http_requests_in_flight", "HTTP requests being served.", registry=registry
        )
        self.overhead = Histogram(
            f"{p}_gateway_overhead_seconds",
            "Time the gateway itself added: total time minus time spent waiting on the LLM.",
            ["route"], buckets=(*_FAST_BUCKETS, 2.5, 5.0), registry=registry,
        )  # fmt: skip

        self.upstream_requests = Counter(
            f"{p}_upstream_requests", "Requests sent to LLM upstreams, by outcome.",
            ["upstream", "outcome"], registry=registry,
        )  # fmt: skip
        self.model_requests = Counter(
            f"{p}_model_requests", "Chat requests by the model asked for (configured, "
            "registered or discovered names; anything else is 'other') and where they went.",
            ["model", "upstream", "outcome"], registry=registry,
        )  # fmt: skip
        self.upstream_duration = Histogram(
            f"{p}_upstream_request_duration_seconds", "LLM upstream latency, to the last byte.",
            ["upstream"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_ttft = Histogram(
            f"{p}_upstream_time_to_first_token_seconds",
            "Time from sending the request to the first streamed token.",
            ["upstream"], buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.upstream_retries = Counter(
            f"{p}_upstream_retries", "Retried upstream attempts.", ["upstream"], registry=registry
        )
        self.upstream_fallbacks = Counter(
            f"{p}_upstream_fallbacks", "Requests served by a fallback upstream.",
            ["upstream"], registry=registry,
        )  # fmt: skip
        self.upstream_tokens = Counter(
            f"{p}_upstream_tokens", "Tokens reported by upstreams in usage.",
            ["upstream", "kind"], registry=registry,
        )  # fmt: skip
        self.upstream_state = Gauge(
            f"{p}_upstream_state", "1 for the upstream's current health state.",
            ["upstream", "state"], registry=registry,
        )  # fmt: skip
        self.breaker_state = Gauge(
            f"{p}_upstream_breaker_state", "1 for the upstream's current circuit-breaker state.",
            ["upstream", "state"], registry=registry,
        )  # fmt: skip

        self.recall_duration = Histogram(
            f"{p}_memory_recall_duration_seconds", "Recall: embedding, search, prompt building.",
            buckets=(*_FAST_BUCKETS, 2.5, 5.0), registry=registry,
        )  # fmt: skip
        self.recalls = Counter(
            f"{p}_memory_recalls", "Memory recalls in chat, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.recall_hits = Histogram(
            f"{p}_memory_recall_hits", "Memories put into the prompt per recall.",
            buckets=(0, 1, 2, 3, 5, 8, 13, 21, 50), registry=registry,
        )  # fmt: skip
        self.memory_writes = Counter(
            f"{p}_memory_writes",
            "Memories written, by source and outcome. A queued memory (into the outbox: every "
            "chat turn's, and the API's during an outage) counts again when it is replayed "
            "(stored, duplicate); sum outcome!=\"queued\" for memories.",
            ["source", "outcome"], registry=registry,
        )  # fmt: skip
        self.outbox_depth = Gauge(
            f"{p}_outbox_depth", "Memory writes waiting in the durable outbox.", registry=registry
        )
        self.outbox_replays = Counter(
            f"{p}_outbox_replays", "Outbox replay attempts, by outcome.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        self.outbox_dead = Gauge(
            f"{p}_outbox_dead",
            "Outbox entries set aside because they can never be stored (GET /admin/outbox).",
            registry=registry,
        )
        self.read_your_writes_timeouts = Counter(
            f"{p}_read_your_writes_timeouts",
            "Recalls or writes that stopped waiting for the user's queued writes.",
            registry=registry,
        )

        self.embedder_duration = Histogram(
            f"{p}_embedder_client_request_duration_seconds", "Calls to the embedding service.",
            buckets=(*_FAST_BUCKETS, 2.5, 5.0, 10.0), registry=registry,
        )  # fmt: skip
        self.embedder_errors = Counter(
            f"{p}_embedder_client_errors", "Failed calls to the embedding service.",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.dependency_ready = Gauge(
            f"{p}_dependency_ready", "1 when the dependency is usable.",
            ["dependency"], registry=registry,
        )  # fmt: skip

        self._upstreams: set[str] = set()
        self._init_known_labels()

    def _init_known_labels(self) -> None:
        for recall in RecallOutcome:
            self.recalls.labels(recall)
        for source in WriteSource:
            for write in WriteOutcome:
                self.memory_writes.labels(source, write)
        for replay in ReplayOutcome:
            self.outbox_replays.labels(replay)
        for kind in EmbedderErrorKind:
            self.embedder_errors.labels(kind)
        for dependency in Dependency:
            self.dependency_ready.labels(dependency)

    def init_upstream(self, upstream: str) -> None:
        """Create the zero series of one configured upstream (idempotent).

        Call once per upstream at start-up, so its retries, fallbacks, outcomes and
        states exist before anything happens to it. Its health starts as ``starting``
        and its breaker as ``closed`` until the pool reports otherwise.
        """
        if upstream in self._upstreams:
            return
        self._upstreams.add(upstream)
        for outcome in UpstreamOutcome:
            self.upstream_requests.labels(upstream, outcome)
        for kind in TokenKind:
            self.upstream_tokens.labels(upstream, kind)
        self.upstream_retries.labels(upstream)
        self.upstream_fallbacks.labels(upstream)
        self.upstream_duration.labels(upstream)
        self.upstream_ttft.labels(upstream)
        self.set_upstream_state(upstream, Health.STARTING)
        self.set_breaker_state(upstream, BreakerState.CLOSED)

    def remove_upstream(self, upstream: str) -> None:
        """Drop every series of an upstream that is gone (a replica unregistered)."""
        self._upstreams.discard(upstream)
        for family in (
            self.upstream_requests, self.model_requests, self.upstream_duration, self.upstream_ttft,
            self.upstream_retries, self.upstream_fallbacks, self.upstream_tokens,
            self.upstream_state, self.breaker_state,
        ):  # fmt: skip
            family.remove_by_labels({"upstream": upstream})

    def set_upstream_state(self, upstream: str, state: Health) -> None:
        for candidate in Health:
            self.upstream_state.labels(upstream, candidate).set(1 if candidate == state else 0)

    def set_breaker_state(self, upstream: str, state: BreakerState) -> None:
        for candidate in BreakerState:
            self.breaker_state.labels(upstream, candidate).set(1 if candidate == state else 0)
