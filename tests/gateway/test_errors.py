"""The app's error handlers: every failure answered in OpenAI's envelope, once.

A tiny app with the gateway's handlers and routes that raise, so each kind
of failure is seen as a client sees it: status, body and headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from gateway.api.chat import validated
from gateway.api.schemas import Text
from gateway.app import create_app
from gateway.errors import APIError, install_error_handlers
from gateway.exceptions import (
    DimensionMismatch,
    GatewayError,
    NoUpstreamAvailable,
    OutboxFull,
    StoreUnavailable,
    UnknownModel,
    UpstreamFailed,
)
from gateway.json_depth import MAX_JSON_DEPTH
from gateway.settings import Settings


def _app(raised: list[BaseException]) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    async def deep() -> None:
        # A service deep below the router: the router neither catches nor translates.
        raise raised[0]

    @app.get("/raise")
    async def route() -> dict[str, str]:
        await deep()
        return {"never": "reached"}

    return app


@pytest.fixture
def raising() -> Iterator[tuple[TestClient, list[BaseException]]]:
    raised: list[BaseException] = []
    with TestClient(_app(raised), raise_server_exceptions=False) as client:
        yield client, raised


def _answer(
    raising: tuple[TestClient, list[BaseException]], exc: BaseException
) -> tuple[int, dict[str, object], dict[str, str]]:
    client, raised = raising
    raised[:] = [exc]
    response = client.get("/raise")
    return response.status_code, response.json()["error"], dict(response.headers)


def test_a_dependency_error_is_a_503_with_retry_after(
    raising: tuple[TestClient, list[BaseException]],
) -> None:
    status, error, headers = _answer(raising, StoreUnavailable("connection refused"))
    assert status == 503 and headers["retry-after"] == "2"
    assert error == {
        "message": "memory store unavailable: connection refused",
        "type": "service_unavailable",
        "code": "store_unavailable",
        "param": None,
    }


def test_no_upstream_is_answered_with_the_verdicts_code(
    raising: tuple[TestClient, list[BaseException]],
) -> None:
    exc = NoUpstreamAvailable("primary: unhealthy", code="llm_unreachable", reason="no LLM answers")
    status, error, headers = _answer(raising, exc)
    assert (status, error["code"], headers["retry-after"]) == (503, "llm_unreachable", "2")
    assert error["message"] == "no LLM answers [primary: unhealthy]"


@pytest.mark.parametrize(
    ("upstream_status", "retry_after", "status", "type_", "header"),
    [(429, 5.0, 429, "rate_limit_error", "5"), (504, None, 504, "timeout_error", "1")],
)
def test_an_upstream_failure_keeps_its_status(
    raising: tuple[TestClient, list[BaseException]],
    upstream_status: int,
    retry_after: float | None,
    status: int,
    type_: str,
    header: str,
) -> None:
    exc = UpstreamFailed(upstream_status, "LLM upstream a answered", retry_after)
    got, error, headers = _answer(raising, exc)
    assert (got, error["type"], error["code"]) == (status, type_, "upstream_unavailable")
    assert headers["retry-after"] == header


def test_client_errors_name_their_param(raising: tuple[TestClient, list[BaseException]]) -> None:
    status, error, headers = _answer(raising, UnknownModel("gpt-9", ["llama"]))
    assert (status, error["type"], error["code"]) == (404, "not_found_error", "model_not_found")
    assert error["param"] == "model" and "retry-after" not in headers
    status, error, _ = _answer(raising, OutboxFull("disk full"))
    assert (status, error["type"], error["code"]) == (507, "api_error", "insufficient_storage")


def test_an_api_error_is_answered_as_raised(
    raising: tuple[TestClient, list[BaseException]],
) -> None:
    exc = APIError(409, "taken", code="alias_configured", headers={"X-Why": "config"})
    status, error, headers = _answer(raising, exc)
    assert (status, error["type"], error["code"], headers["x-why"]) == (
        409,
        "conflict_error",
        "alias_configured",
        "config",
    )


@pytest.mark.parametrize("exc", [RuntimeError("secret path /x"), DimensionMismatch("size 4")])
def test_anything_else_is_a_500_without_detail(
    raising: tuple[TestClient, list[BaseException]], exc: BaseException
) -> None:
    # A start-up failure is no GatewayError: were one raised later, it would not leak.
    status, error, _ = _answer(raising, exc)
    assert (status, error["message"], error["code"]) == (500, "internal error", "internal_error")


def test_a_subclass_without_its_own_handler_is_still_translated(
    raising: tuple[TestClient, list[BaseException]],
) -> None:
    class Novel(StoreUnavailable):
        """A new kind of store outage: the base's translation applies."""

    status, error, _ = _answer(raising, Novel("x"))
    assert (status, error["code"]) == (503, "store_unavailable")
    assert isinstance(Novel("x"), GatewayError)


class Item(BaseModel):
    n: int


def test_a_body_fastapi_cannot_parse_is_invalid_json_as_in_chat() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/items")
    async def add(item: Item) -> dict[str, int]:
        return {"n": item.n}

    with TestClient(app, raise_server_exceptions=False) as client:
        for body in (b'{"n": 1, "s": "\xff"}', b'{"n": ' + b"9" * 5000 + b"}", b'{"n": 1'):
            headers = {"content-type": "application/json"}
            answer = client.post("/items", content=body, headers=headers)
            assert answer.status_code == 400, body[:20]
            assert answer.json()["error"] == {
                "message": "request body is not valid JSON",
                "type": "invalid_request_error",
                "code": "invalid_json",
                "param": None,
            }, body[:20]


class Note(BaseModel):
    # As the gateway's optional strings are declared (Text | None, constrained):
    # pydantic checks the limit on the union and says "items".
    text: Text | None = Field(default=None, min_length=1, max_length=16_000)
    tags: list[str] = Field(default=[], max_length=2)


def _notes_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/notes")
    async def add(note: Note) -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_a_body_nested_past_the_parser_says_so_with_the_limit() -> None:
    with TestClient(_notes_app(), raise_server_exceptions=False) as client:
        deep = b'{"text": "t", "meta": ' + b'{"d": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"
        answer = client.post("/notes", content=deep, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "request body is nested too deeply: JSON arrays and objects may nest "
        f"{MAX_JSON_DEPTH} levels at most",
        "type": "invalid_request_error",
        "code": "invalid_json",
        "param": None,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "x" * 16_001}, "text: String should have at most 16000 characters"),
        ({"text": ""}, "text: String should have at least 1 character"),
        ({"tags": ["a", "b", "c"]}, "tags: List should have at most 2 items after validation"),
    ],
)
def test_a_length_limit_names_characters_for_text_and_items_for_lists(
    body: dict[str, object], message: str
) -> None:
    with TestClient(_notes_app(), raise_server_exceptions=False) as client:
        answer = client.post("/notes", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith(message), answer.json()
    # Chat, Responses and Messages validate their bodies themselves: the same words.
    with pytest.raises(APIError) as caught:
        validated(Note, body)
    assert caught.value.message.startswith(message)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[TestClient]:
    """The real app (its routes in their order), with nothing behind it."""
    dead = "http://127.0.0.1:9/v1"
    settings = Settings(
        data_dir=tmp_path / "data", llm_url=dead, embedder_url=dead, health_interval_s=60
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/nope", None, 404, "not_found"),
        ("DELETE", "/admin/nope", None, 404, "not_found"),
        ("POST", "/livez", None, 405, "method_not_allowed"),
        ("PUT", "/v1/memories", None, 405, "method_not_allowed"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/memories", b"{nope", 400, "invalid_json"),
        ("POST", "/v1/memories/search", b'{"user_id": "u",', 400, "invalid_json"),
        ("POST", "/admin/models", b"\xff", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"{nope", 400, "invalid_json"),
    ],
)
def test_the_frameworks_own_refusals_are_in_the_envelope(
    gateway: TestClient, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    answer = gateway.request(method, path, content=body, headers=JSON if body else None)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "code", "param"} and error["code"] == code
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/livez", "GET, HEAD"),
        # Starlette named the first route that matched the path: POST alone.
        ("OPTIONS", "/v1/memories", "DELETE, GET, POST"),
        ("PATCH", "/v1/memories/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "DELETE, GET"),
        # The gateway's own 405 for a /v1 path the pass-through would take had none.
        ("PUT", "/v1/memories", "DELETE, GET, POST"),
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/admin/models/some/alias", "DELETE"),
        # Only the pass-through serves the path.
        ("OPTIONS", "/v1/images/generations", "DELETE, GET, PATCH, POST, PUT"),
    ],
)
def test_a_405_allows_every_method_the_path_is_served_with(
    gateway: TestClient, method: str, path: str, allow: str
) -> None:
    answer = gateway.request(method, path)
    assert answer.status_code == 405
    assert answer.headers["allow"] == allow
    assert answer.json()["error"]["message"] == "Method Not Allowed"


@pytest.mark.parametrize("body", [None, b""])
@pytest.mark.parametrize("path", ["/v1/memories", "/v1/memories/search", "/admin/models"])
def test_a_missing_body_is_said_to_be_missing(
    gateway: TestClient, path: str, body: bytes | None
) -> None:
    answer = gateway.post(path, content=body, headers=JSON)
    assert answer.status_code == 400
    assert answer.json()["error"] == {
        "message": "a request body is required: a JSON object",
        "type": "invalid_request_error",
        "code": "invalid_request",
        "param": None,
    }


@pytest.mark.parametrize("path", ["/livez", "/readyz"])
def test_probes_answer_head_with_the_status_of_get(gateway: TestClient, path: str) -> None:
    """Load balancers' health checks often send HEAD; it was 405."""
    got, head = gateway.get(path), gateway.head(path)
    assert head.status_code == got.status_code and head.content == b""


def test_a_500_says_the_connection_closes(
    raising: tuple[TestClient, list[BaseException]],
) -> None:
    # The server drops the connection after an unhandled error; without the
    # header a pooling client sends its next request into a closed socket.
    _, _, headers = _answer(raising, RuntimeError("boom"))
    assert headers["connection"] == "close"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_search_route_with_another_method_is_a_405_not_a_bad_memory_id(
    gateway: TestClient, method: str
) -> None:
    # ``/v1/memories/{id}`` would read "search" as an id (400 invalid_memory_id).
    answer = gateway.request(method, "/v1/memories/search")
    assert answer.status_code == 405, answer.text
    assert "POST" in answer.headers["allow"]
    assert answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "own"),
    [
        ("POST", "/v1/memories/", "/v1/memories"),
        ("GET", "/v1/memories/?user_id=alice", "/v1/memories"),
        ("POST", "/v1/memories/search/", "/v1/memories/search"),
        ("POST", "/v1/chat/completions/", "/v1/chat/completions"),
        ("POST", "/v1//chat/completions", "/v1/chat/completions"),
        ("GET", "/v1//models", "/v1/models"),
        ("POST", "/v1/completions/", "/v1/completions"),
    ],
)
def test_a_gateway_path_with_a_slash_too_many_is_not_forwarded(
    gateway: TestClient, method: str, path: str, own: str
) -> None:
    # Forwarded, a memory's text (or a chat without its memory) went to the
    # upstream with the operator's key; this upstream is down, so a forward
    # would have been a 503.
    body = b'{"user_id": "alice", "text": "my PIN is 4321"}' if method == "POST" else None
    answer = gateway.request(method, path, content=body, headers=JSON if body else None)
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert error["code"] == "not_found" and repr(own) in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/memories/search/extra"),
        ("GET", "/v1/memories/0b7e1c3a-1f0e-4d9c-9f55-4d2b1a1e2f3a/history"),  # mem0's path
        ("POST", "/v1/Memories"),
    ],
)
def test_a_path_under_the_memory_api_it_does_not_serve_is_not_forwarded(
    gateway: TestClient, method: str, path: str
) -> None:
    # Forwarded, a memory's text went to the LLM upstream with the operator's key,
    # and the client read "the LLM upstream answered 404"; this upstream is down,
    # so a forward would have been a 503.
    body = b'{"user_id": "alice", "text": "my PIN is 4321"}' if method == "POST" else None
    answer = gateway.request(method, path, content=body, headers=JSON if body else None)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "not_found"


def test_an_upstream_path_with_a_trailing_slash_still_goes_upstream(gateway: TestClient) -> None:
    answer = gateway.get("/v1/images/generations/")  # not the gateway's: the upstream's
    assert answer.status_code == 503


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files"),  # every tenant's uploads, on the operator's account
        ("GET", "/v1/files/file-abc/content"),
        ("POST", "/v1/fine_tuning/jobs"),
        ("GET", "/v1/batches"),
        ("DELETE", "/v1/vector_stores/vs_1"),
        ("POST", "/v1/load_lora_adapter"),  # vLLM: changes the model for everyone
        ("GET", "/v1//Files"),
    ],
)
def test_the_upstream_accounts_own_paths_are_never_forwarded(
    gateway: TestClient, method: str, path: str
) -> None:
    # This upstream is down: a forward would have been a 503.
    answer = gateway.request(method, path)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "upstream_account_path" and error["type"] == "permission_error"


@pytest.mark.parametrize("path", ["/livez/", "/metrics/", "/tokenize/", "/admin/outbox/"])
def test_a_path_with_a_slash_too_many_is_no_redirect_anyone_can_aim(
    gateway: TestClient, path: str
) -> None:
    answer = gateway.get(path, headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code in (404, 405) and "location" not in answer.headers
    assert answer.json()["error"]["code"] in ("not_found", "method_not_allowed")
