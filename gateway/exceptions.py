"""The gateway's own exceptions, and what a client reads for each.

Every failure a client can be answered with is a :class:`GatewayError`: its
class says the HTTP status, the error ``code`` and how the message reads, and
``gateway.errors`` turns any of them into OpenAI's error envelope, in one
exception handler. Routers raise these, or let them pass through from the
services; none catches one to translate it. (Errors about the request itself,
a bad field, an unknown id, raise ``gateway.errors.APIError`` where they are
found, with their status written there.)

The hierarchy::

    GatewayError                    answered in OpenAI's error envelope
    ├── DependencyError             503, Retry-After: a dependency cannot serve now
    │   ├── StoreUnavailable            store_unavailable      the vector store
    │   ├── EmbedderUnavailable         embedder_unavailable   the embedder
    │   ├── MemoryUnavailable           memory_unavailable     a memory search needs both
    │   │   └── MemoryRequired          memory_unavailable     a chat turn, when memory is required
    │   ├── RegistryUnavailable         registry_unavailable   the store of registered models
    │   ├── NoUpstreamAvailable         llm_starting | llm_unreachable | llm_unavailable
    │   └── UpstreamFailed              upstream_unavailable   429, 502, 503 or 504: the LLM failed
    ├── UpstreamReplyFailed         the LLM answered, and its answer broke before it was relayed
    │   ├── UpstreamTimedOut            504 upstream_timeout
    │   ├── UpstreamBroke               502 upstream_error
    │   ├── UpstreamInvalid             502 upstream_invalid   a 200 that is no JSON object
    │   │   ├── UpstreamNoReply         upstream_invalid       a 200 without the API's answer
    │   │   └── UpstreamNotStream       upstream_invalid       a stream request answered otherwise
    │   └── UpstreamTooLarge            502 upstream_response_too_large
    ├── InputRejected               400: text that can never be embedded or stored
    │   ├── EmbedderRejected            invalid_text
    │   └── MemoryRejected              unstorable
    ├── UnknownModel                404 model_not_found
    ├── ShuttingDown                503 gateway_shutting_down: the shutdown grace ran out
    └── OutboxFull                  507 insufficient_storage: the data dir's disk is full

    CannotStart                     never answered: the gateway refuses to start
    ├── DataDirProblem                  the data dir is unwritable or full
    └── DimensionMismatch               the collection has another vector size or layout

``str(exc)`` stays the bare cause (what the health monitors and the logs
show); the client's message is ``exc.client_message()``, the cause within a
sentence that names what failed.

Some exceptions stay private to where they are raised and caught, since they
never reach a client as they are:

- ``gateway.upstream.http.TransportError`` (and ``ConnectFailed``,
  ``TimedOut``, ``Disconnected``): the LLM client's vocabulary. The pool
  turns them into ``UpstreamFailed`` (or retries), the relay into a 502 or
  504 before a stream starts and into an error event once it has (a started
  stream has sent its status already).
- ``gateway.upstream.pool._Retryable``: tenacity's signal to try again.
- ``gateway.monitor.ProbeFailed``: a probe's verdict to its monitor, which
  keeps it as the dependency's state.
- ``gateway.memory.forgets.Forgotten``: the outbox refusing a chat turn
  begun before its user's forget; the memory service stores nothing and
  counts it (``memgate_memory_writes_total{outcome="forgotten"}``).

This module imports nothing of the gateway's, so every layer can raise from it.
"""

from __future__ import annotations

from collections.abc import Sequence

# How long a client should wait before retrying a dependency that cannot serve.
RETRY_AFTER_S = 2
# The upstream statuses a client sees as they are; any other failure is a 502.
RELAYED_UPSTREAM_STATUS = frozenset({429, 502, 503, 504})


class GatewayError(Exception):
    """A failure answered to the client as ``status_code`` with ``code``.

    ``template`` places the cause (``str(self)``) in the client's message.
    """

    status_code: int = 500
    code: str = "internal_error"
    template: str = "{}"
    param: str | None = None

    def client_message(self) -> str:
        return self.template.format(self)

    def headers(self) -> dict[str, str]:
        return {}


class DependencyError(GatewayError):
    """A dependency cannot serve now; retrying after ``Retry-After`` may work."""

    status_code = 503
    code = "service_unavailable"
    retry_after_s: int = RETRY_AFTER_S

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class StoreUnavailable(DependencyError):
    """The vector store cannot be reached right now; the caller may retry later."""

    code = "store_unavailable"
    template = "memory store unavailable: {}"


class EmbedderUnavailable(DependencyError):
    """The embedder cannot embed right now (down, loading, overloaded).

    The memory service queues a write or answers ``MemoryUnavailable`` instead,
    so a client meets this only through those."""

    code = "embedder_unavailable"
    template = "embedder unavailable: {}"


class MemoryUnavailable(DependencyError):
    """Memory cannot be read right now: the embedder or the vector store is down."""

    code = "memory_unavailable"
    template = "memory search unavailable: {}"


class MemoryRequired(MemoryUnavailable):
    """A chat turn could not recall and ``GATEWAY_MEMORY_REQUIRED`` forbids
    answering without memory (otherwise the turn goes on, degraded)."""

    template = "memory is required but unavailable: {}"


class RegistryUnavailable(DependencyError):
    """The store of registrations cannot be read or written now (try again later)."""

    code = "registry_unavailable"
    template = "model registry unavailable: {}"


class NoUpstreamAvailable(DependencyError):
    """No upstream can take a request now. ``str()`` is each replica's state;
    ``code`` and ``reason`` say why for the client (gateway.upstream.availability)."""

    def __init__(self, detail: str, *, code: str, reason: str) -> None:
        super().__init__(detail)
        self.code = code
        self.reason = reason

    def client_message(self) -> str:
        return f"{self.reason} [{self}]"


class UpstreamFailed(DependencyError):
    """Every attempt failed; carries what the last one saw, for the client:
    its ``status`` (429, 502, 503, 504 as they are, anything else as 502) and
    its ``Retry-After`` (at least a second)."""

    code = "upstream_unavailable"

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.status_code = status if status in RELAYED_UPSTREAM_STATUS else 502
        self.retry_after_s = max(1, int(retry_after or 1))


class UpstreamReplyFailed(GatewayError):
    """The LLM answered, then its answer could not be read whole: the request
    may have been served, so no Retry-After invites a repeat."""

    status_code = 502
    code = "upstream_error"


class UpstreamTimedOut(UpstreamReplyFailed):
    """The answer's body did not come within the total timeout."""

    status_code = 504
    code = "upstream_timeout"
    template = "the LLM upstream timed out"


class UpstreamBroke(UpstreamReplyFailed):
    """The answer's body broke off, or could not be decoded."""

    template = "the LLM upstream failed"


class UpstreamInvalid(UpstreamReplyFailed):
    """A 200 whose body is not the JSON object the API promises."""

    code = "upstream_invalid"
    template = "the LLM upstream answered with invalid JSON"


class UpstreamNoReply(UpstreamInvalid):
    """A 200 whose JSON object is not the API's answer (a completion without
    ``choices``): nothing to relay, nor to remember."""

    template = "the LLM upstream answered 200 without a reply"


class UpstreamNotStream(UpstreamInvalid):
    """A stream request answered 200 with something else (HTML, JSON)."""

    template = "the LLM upstream answered a stream request without an event stream"


class UpstreamTooLarge(UpstreamReplyFailed):
    """An answer larger than the gateway holds (GATEWAY_MAX_UPSTREAM_BODY_BYTES)."""

    code = "upstream_response_too_large"
    template = (
        "the LLM upstream's answer is larger than this gateway takes "
        "(GATEWAY_MAX_UPSTREAM_BODY_BYTES)"
    )


class InputRejected(GatewayError):
    """The input can never be embedded or stored as given: retrying will not help."""

    status_code = 400
    code = "invalid_request"


class EmbedderRejected(InputRejected):
    """The embedder refused the input itself (a 4xx)."""

    code = "invalid_text"
    template = "the embedder rejected the text: {}"


class MemoryRejected(InputRejected):
    """This memory can never be stored as given (a client error, not an outage)."""

    code = "unstorable"
    template = "this memory cannot be stored: {}"


class UnknownModel(GatewayError):
    """No upstream serves ``model``; ``available`` are the names that route."""

    status_code = 404
    code = "model_not_found"
    param = "model"

    def __init__(self, model: str, available: Sequence[str]) -> None:
        super().__init__(model)
        self.model = model
        self.available = list(available)

    def client_message(self) -> str:
        shown = ", ".join(self.available[:50]) or "none yet"
        return f"model {self.model!r} does not exist here; available: {shown}"


class ShuttingDown(GatewayError):
    """The gateway is stopping and its shutdown grace ran out before the answer
    came (gateway.drain). Another gateway can serve the request, so it is a 503
    with ``Retry-After``, and the connection is closed."""

    status_code = 503
    code = "gateway_shutting_down"
    template = "the gateway is shutting down: {}; send the request again"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Connection": "close"}


class OutboxRefused(GatewayError):
    """The outbox cannot take the write: nothing was accepted."""


class OutboxFull(OutboxRefused):
    """The outbox cannot take the write: its disk is full."""

    status_code = 507
    code = "insufficient_storage"
    template = "{}; free space under the data dir"


class OutboxUnavailable(OutboxRefused, DependencyError):
    """The outbox cannot take the write for another reason: locked by another
    process for longer than SQLite's busy timeout, read-only, failing, or its
    file removed while the gateway ran (which only a restart mends)."""

    code = "outbox_unavailable"


class CannotStart(Exception):
    """The gateway cannot start as configured; the message is for the operator."""


class DataDirProblem(CannotStart):
    """The data dir cannot be used; the message is one line for the operator."""


class DimensionMismatch(CannotStart):
    """The collection exists with another vector size or layout: refuse, never corrupt."""
