"""The hierarchy of gateway.exceptions: what each error says to a client.

The statuses, codes, messages and Retry-After values here are the ones the
endpoints answered before the translation moved into one handler; the e2e
suites pin several of them from the outside.
"""

from __future__ import annotations

import pytest

from gateway.exceptions import (
    CannotStart,
    DataDirProblem,
    DependencyError,
    DimensionMismatch,
    EmbedderRejected,
    EmbedderUnavailable,
    GatewayError,
    InputRejected,
    MemoryRejected,
    MemoryRequired,
    MemoryUnavailable,
    NoUpstreamAvailable,
    OutboxFull,
    RegistryUnavailable,
    StoreUnavailable,
    UnknownModel,
    UpstreamBroke,
    UpstreamFailed,
    UpstreamInvalid,
    UpstreamNoReply,
    UpstreamNotStream,
    UpstreamReplyFailed,
    UpstreamTimedOut,
    UpstreamTooLarge,
)

CASES = [
    (StoreUnavailable("timeout"), 503, "store_unavailable", "memory store unavailable: timeout"),
    (EmbedderUnavailable("refused"), 503, "embedder_unavailable", "embedder unavailable: refused"),
    (MemoryUnavailable("down"), 503, "memory_unavailable", "memory search unavailable: down"),
    (
        MemoryRequired("down"),
        503,
        "memory_unavailable",
        "memory is required but unavailable: down",
    ),
    (
        RegistryUnavailable("qdrant unreachable"),
        503,
        "registry_unavailable",
        "model registry unavailable: qdrant unreachable",
    ),
    (
        EmbedderRejected("too long"),
        400,
        "invalid_text",
        "the embedder rejected the text: too long",
    ),
    (
        MemoryRejected("lone surrogate"),
        400,
        "unstorable",
        "this memory cannot be stored: lone surrogate",
    ),
    (
        OutboxFull("the outbox cannot take the write: disk full"),
        507,
        "insufficient_storage",
        "the outbox cannot take the write: disk full; free space under the data dir",
    ),
]


@pytest.mark.parametrize(("exc", "status", "code", "message"), CASES)
def test_each_error_declares_its_answer(
    exc: GatewayError, status: int, code: str, message: str
) -> None:
    assert (exc.status_code, exc.code, exc.client_message()) == (status, code, message)


@pytest.mark.parametrize("exc", [case[0] for case in CASES])
def test_the_cause_stays_the_bare_text(exc: GatewayError) -> None:
    # Monitors and logs show str(exc); only the client's message adds the context.
    assert str(exc) in exc.client_message() and str(exc) != exc.client_message()


@pytest.mark.parametrize(
    ("exc", "status", "code", "message"),
    [
        (UpstreamTimedOut("sock_read"), 504, "upstream_timeout", "the LLM upstream timed out"),
        (
            UpstreamBroke("PayloadError: cut"),
            502,
            "upstream_error",
            "the LLM upstream failed",
        ),
        (
            UpstreamInvalid("text/html"),
            502,
            "upstream_invalid",
            "the LLM upstream answered with invalid JSON",
        ),
        (
            UpstreamNoReply("keys ['id']"),
            502,
            "upstream_invalid",
            "the LLM upstream answered 200 without a reply",
        ),
        (
            UpstreamNotStream("text/html"),
            502,
            "upstream_invalid",
            "the LLM upstream answered a stream request without an event stream",
        ),
        (
            UpstreamTooLarge("the body exceeds 1024 bytes"),
            502,
            "upstream_response_too_large",
            "the LLM upstream's answer is larger than this gateway takes "
            "(GATEWAY_MAX_UPSTREAM_BODY_BYTES)",
        ),
    ],
)
def test_a_broken_reply_names_no_cause_and_invites_no_retry(
    exc: UpstreamReplyFailed, status: int, code: str, message: str
) -> None:
    # The request may have been served: no Retry-After, and the transport's
    # detail stays in the gateway (str(exc)), not in the client's message.
    assert (exc.status_code, exc.code, exc.client_message()) == (status, code, message)
    assert exc.headers() == {} and str(exc) not in exc.client_message()


def test_a_dependency_that_cannot_serve_says_when_to_retry() -> None:
    for exc in (StoreUnavailable("x"), MemoryUnavailable("x"), RegistryUnavailable("x")):
        assert isinstance(exc, DependencyError)
        assert exc.headers() == {"Retry-After": "2"}
    for other in (MemoryRejected("x"), OutboxFull("x"), UnknownModel("m", [])):
        assert other.headers() == {}


def test_no_upstream_available_reads_as_its_verdict() -> None:
    exc = NoUpstreamAvailable(
        "primary: starting (breaker closed)", code="llm_starting", reason="the LLM is starting"
    )
    assert (exc.status_code, exc.code) == (503, "llm_starting")
    assert exc.client_message() == "the LLM is starting [primary: starting (breaker closed)]"
    assert exc.headers() == {"Retry-After": "2"}


@pytest.mark.parametrize(
    ("status", "retry_after", "client_status", "header"),
    [
        (429, 7.9, 429, "7"),
        (502, None, 502, "1"),
        (503, 0.2, 503, "1"),
        (504, None, 504, "1"),
        (500, 3.0, 502, "3"),  # anything else the upstream did is its failure: 502
    ],
)
def test_an_upstream_failure_keeps_its_status_and_retry_after(
    status: int, retry_after: float | None, client_status: int, header: str
) -> None:
    exc = UpstreamFailed(status, "LLM upstream a answered", retry_after)
    assert (exc.status, exc.retry_after) == (status, retry_after)  # what the pool reads
    assert (exc.status_code, exc.code) == (client_status, "upstream_unavailable")
    assert exc.client_message() == "LLM upstream a answered"
    assert exc.headers() == {"Retry-After": header}


def test_an_unknown_model_names_the_models_that_route() -> None:
    exc = UnknownModel("gpt-9", [f"m{i}" for i in range(60)])
    assert (exc.status_code, exc.code, exc.param) == (404, "model_not_found", "model")
    shown = ", ".join(f"m{i}" for i in range(50))  # at most 50
    assert exc.client_message() == f"model 'gpt-9' does not exist here; available: {shown}"
    assert UnknownModel("gpt-9", []).client_message().endswith("available: none yet")


def test_the_branches() -> None:
    assert issubclass(MemoryRequired, MemoryUnavailable)
    assert issubclass(EmbedderRejected, InputRejected) and issubclass(MemoryRejected, InputRejected)
    assert issubclass(UpstreamFailed, DependencyError)
    # Start-up failures are for the operator, never answered to a client.
    for cls in (DataDirProblem, DimensionMismatch):
        assert issubclass(cls, CannotStart) and not issubclass(cls, GatewayError)
