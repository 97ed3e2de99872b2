"""The fixed words the gateway answers with and labels its metrics with.

Each is a ``StrEnum``: a member is the string itself on the wire, in logs and
as a Prometheus label value, so the API's JSON is unchanged, while the
OpenAPI document lists the allowed values, ``gateway.metrics`` creates the
zero series of every value from the enum, and a misspelt word is an error
(mypy, or an ``AttributeError``) rather than a new label nobody graphs.
"""

from __future__ import annotations

from enum import StrEnum


class Health(StrEnum):
    """A monitored dependency's state (gateway.monitor)."""

    STARTING = "starting"  # not up yet (vLLM loading its model refuses connections)
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # it was up once and is not now


class Availability(StrEnum):
    """Whether a group of LLM replicas can take a request (gateway.upstream.pool)."""

    HEALTHY = "healthy"  # one replica can
    STARTING = "starting"  # none can, one is still coming up
    UNAVAILABLE = "unavailable"


class BreakerState(StrEnum):
    """An upstream's circuit breaker (gateway.upstream.breaker)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class RouteSource(StrEnum):
    """Where a model name's route comes from."""

    CONFIG = "config"  # an alias in GATEWAY_CONFIG
    REGISTERED = "registered"  # an alias registered at run time (POST /admin/models)
    DISCOVERED = "discovered"  # listed by an upstream's /v1/models


class Readiness(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"  # serving, without memory (GATEWAY_MEMORY_REQUIRED=false)
    NOT_READY = "not_ready"


class DiskStatus(StrEnum):
    OK = "ok"
    LOW = "low"  # less free space under the data dir than the reserve
    LOST = "lost"  # the outbox's file was removed while the gateway ran


class MemoryEvent(StrEnum):
    """What a write did with one memory (``POST /v1/memories``' ``event``)."""

    ADD = "ADD"  # new
    NONE = "NONE"  # the user has this text already: the existing id


class UpstreamOutcome(StrEnum):
    """How one request to an LLM upstream ended."""

    SUCCESS = "success"
    HTTP_ERROR = "http_error"
    REJECTED = "rejected"  # its 400, 404, 413 or 422: the request's fault, relayed as such
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    STREAM_ERROR = "stream_error"
    CLIENT_DISCONNECT = "client_disconnect"
    SHUTDOWN = "shutdown"  # the gateway's shutdown grace ran out (gateway.drain)


class TokenKind(StrEnum):
    PROMPT = "prompt"
    COMPLETION = "completion"


class RecallOutcome(StrEnum):
    HIT = "hit"
    MISS = "miss"
    DEGRADED = "degraded"  # the embedder or the store failed: the turn went on without


class WriteSource(StrEnum):
    API = "api"  # POST /v1/memories
    CHAT = "chat"  # a conversation turn


class WriteOutcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    QUEUED = "queued"
    FAILED = "failed"
    FORGOTTEN = "forgotten"  # a chat turn that began before its user's forget: not stored


class ReplayOutcome(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    DEAD = "dead"  # can never be stored: set aside (GET /admin/outbox)


class EmbedderErrorKind(StrEnum):
    """Failed calls to the embedder; it also reports ``http_<status>`` for every
    answer that is neither 200 nor a verdict on the texts (a set bounded by
    HTTP, so not listed here)."""

    UNREACHABLE = "unreachable"
    REJECTED = "rejected"
    BAD_RESPONSE = "bad_response"


class Dependency(StrEnum):
    """The dependencies whose readiness is a metric (the LLM has its own)."""

    EMBEDDER = "embedder"
    VECTOR_STORE = "vector_store"
