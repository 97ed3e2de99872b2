"""The request-context middleware: request ids, route templates, HTTP metrics, access log.

Two apps: a tiny one (the middleware, the gateway's error handlers and three
routes) for ids and logs, and the real ``create_app`` for route templates.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from starlette.types import Message, Scope

from gateway.app import create_app
from gateway.errors import install_error_handlers
from gateway.logs import JsonFormatter
from gateway.metrics import GatewayMetrics
from gateway.observability import (
    MAX_REQUEST_ID,
    RequestContextMiddleware,
    client_request_id,
    request_id_var,
    route_template,
)
from gateway.settings import Settings

GENERATED = re.compile(r"[0-9a-f]{32}")
DEAD_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens, connections are refused


class JsonLines(logging.Handler):
    """Formats each record as it is emitted (in the request's context), like StreamHandler."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def by_logger(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["logger"] == name]


@pytest.fixture
def logs() -> Iterator[JsonLines]:
    handler = JsonLines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def small_app(registry: CollectorRegistry, *, access_log: bool = True) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    log = logging.getLogger("gateway.test")

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        log.info("looking up an item")
        return {"request_id": request_id_var.get() or ""}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_middleware(
        RequestContextMiddleware, metrics=GatewayMetrics(registry), access_log=access_log
    )
    return app


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def client(registry: CollectorRegistry) -> Iterator[TestClient]:
    with TestClient(small_app(registry), raise_server_exceptions=False) as test_client:
        yield test_client


# --- request ids ----------------------------------------------------------------


def test_the_clients_request_id_is_returned_and_seen_by_the_handler(client: TestClient) -> None:
    response = client.get("/items/1", headers={"x-request-id": "req-abc_123:xyz"})
    assert response.headers["x-request-id"] == "req-abc_123:xyz"
    assert response.json() == {"request_id": "req-abc_123:xyz"}


def test_a_request_id_is_generated_when_the_client_sends_none(client: TestClient) -> None:
    first = client.get("/items/1").headers["x-request-id"]
    second = client.get("/items/1").headers["x-request-id"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second)
    assert first != second


def test_errors_and_unmatched_paths_carry_the_request_id_too(client: TestClient) -> None:
    assert client.get("/nope", headers={"x-request-id": "r-404"}).headers["x-request-id"] == "r-404"


@pytest.mark.parametrize(
    "raw",
    [
        b"x" * (MAX_REQUEST_ID + 1),  # over-long
        b"",
        b"has space",
        b"tab\there",
        b"ctl\x01char",
        b"new\nline",
        "caf\u00e9".encode("latin-1"),  # not ASCII
        "caf\u00e9".encode(),
    ],
    ids=["too-long", "empty", "space", "tab", "control", "newline", "latin1", "utf8"],
)
def test_unusable_request_ids_are_replaced(raw: bytes) -> None:
    assert client_request_id({"headers": [(b"x-request-id", raw)]}) is None


def test_usable_request_ids_are_kept() -> None:
    longest = b"a" * MAX_REQUEST_ID
    assert client_request_id({"headers": [(b"x-request-id", longest)]}) == longest.decode()
    uid = str(uuid.uuid4())
    headers = [(b"accept", b"*/*"), (b"x-request-id", uid.encode())]
    assert client_request_id({"headers": headers}) == uid


def test_an_over_long_request_id_is_replaced_end_to_end(client: TestClient) -> None:
    returned = client.get("/items/1", headers={"x-request-id": "r" * 129}).headers["x-request-id"]
    assert GENERATED.fullmatch(returned)


async def test_replaced_ids_never_reach_the_response_and_the_id_is_reset_after() -> None:
    """Raw ASGI, so bytes no HTTP client would send can be tried."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = RequestContextMiddleware(app, GatewayMetrics(CollectorRegistry()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-request-id", b"a\r\nb")],
    }
    await middleware(scope, receive, send)
    headers = dict(sent[0]["headers"])
    assert GENERATED.fullmatch(headers[b"x-request-id"].decode())
    assert request_id_var.get() is None


# --- logs during a request ------------------------------------------------------


def test_log_lines_during_a_request_carry_its_id(client: TestClient, logs: JsonLines) -> None:
    client.get("/items/1", headers={"x-request-id": "trace-me"})
    [line] = logs.by_logger("gateway.test")
    assert line["msg"] == "looking up an item"
    assert line["request_id"] == "trace-me"
    assert line["level"] == "info"


def test_the_unhandled_error_line_carries_the_request_id(
    client: TestClient, logs: JsonLines
) -> None:
    response = client.get("/boom", headers={"x-request-id": "boom-1"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    [error] = logs.by_logger("gateway.errors")
    assert error["level"] == "error"
    assert error["request_id"] == "boom-1"
    assert "RuntimeError: kaboom" in error["exc"]


def test_one_access_line_per_request_without_query_or_headers(
    client: TestClient, logs: JsonLines
) -> None:
    client.get(
        "/items/42?user_id=alice-secret",
        headers={"x-request-id": "acc-1", "authorization": "Bearer sk-topsecret"},
    )
    [access] = logs.by_logger("gateway.access")
    assert access["request_id"] == "acc-1"
    assert access["method"] == "GET"
    assert access["route"] == "/items/{item_id}"
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] >= 0
    assert access["msg"] == "GET /items/{item_id} 200"
    # The gateway's own lines (the test client logs its requests too).
    text = json.dumps([line for line in logs.lines if line["logger"].startswith("gateway")])
    assert "alice-secret" not in text and "sk-topsecret" not in text and "/items/42" not in text


def test_failed_requests_are_logged_with_status_500(client: TestClient, logs: JsonLines) -> None:
    client.get("/boom")
    [access] = logs.by_logger("gateway.access")
    assert (access["route"], access["status"]) == ("/boom", 500)


def test_the_access_log_can_be_switched_off(registry: CollectorRegistry, logs: JsonLines) -> None:
    with TestClient(small_app(registry, access_log=False)) as quiet:
        quiet.get("/items/1")
    assert logs.by_logger("gateway.access") == []
    assert len(logs.by_logger("gateway.test")) == 1  # other logs still flow
    # Metrics do not depend on the access log.
    labels = {"route": "/items/{item_id}", "method": "GET", "status": "200"}
    assert registry.get_sample_value("memgate_http_requests_total", labels) == 1


def test_no_access_line_when_info_is_disabled(client: TestClient, logs: JsonLines) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    client.get("/items/1")
    assert logs.by_logger("gateway.access") == []


# --- route templates in metrics -------------------------------------------------


def test_route_template_reads_the_matched_route() -> None:
    class Route:
        path_format = "/v1/memories/{memory_id}"

    assert route_template({"route": Route()}) == "/v1/memories/{memory_id}"
    assert route_template({}) == "unmatched"
    assert route_template({"route": None}) == "unmatched"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[TestClient, CollectorRegistry]]:
    """The real app, its lifespan run, with every dependency dead (refused at once)."""
    settings = Settings(
        data_dir=tmp_path / "data", llm_url=DEAD_URL, embedder_url=DEAD_URL, health_interval_s=60
    )
    registry = CollectorRegistry()
    with TestClient(create_app(settings, registry=registry)) as test_client:
        yield test_client, registry


def http_requests(registry: CollectorRegistry, route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return registry.get_sample_value("memgate_http_requests_total", labels) or 0.0


def observed(registry: CollectorRegistry, route: str, method: str) -> float:
    labels = {"route": route, "method": method}
    return registry.get_sample_value("memgate_http_request_duration_seconds_count", labels) or 0.0


def test_concrete_ids_and_paths_become_templates_in_metrics(
    gateway: tuple[TestClient, CollectorRegistry],
) -> None:
    client, registry = gateway
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for memory_id in ids:
        assert client.get(f"/v1/memories/{memory_id}").status_code == 404
    assert client.delete(f"/v1/memories/{ids[0]}").status_code == 404
    assert client.get("/v1/memories/not-a-uuid").status_code == 400
    assert client.get("/does/not/exist").status_code == 404
    assert client.get("/v2/nothing-here/either").status_code == 404
    # Other /v1 paths go to the LLM (none here: 503), under one template.
    assert client.get("/v1/nothing-here/either").status_code == 503
    assert client.get("/livez").status_code == 200
    assert client.post("/livez").status_code == 405

    template = "/v1/memories/{memory_id}"
    assert http_requests(registry, template, "GET", 404) == 3
    assert http_requests(registry, template, "GET", 400) == 1
    assert http_requests(registry, template, "DELETE", 404) == 1
    assert observed(registry, template, "GET") == 4
    assert http_requests(registry, "unmatched", "GET", 404) == 2
    assert http_requests(registry, "/v1/{path}", "GET", 503) == 1
    assert http_requests(registry, "/livez", "GET", 200) == 1
    assert http_requests(registry, "/livez", "POST", 405) == 1

    exposition = client.get("/metrics").text
    assert not any(memory_id in exposition for memory_id in ids)
    assert "not-a-uuid" not in exposition and "/does/not/exist" not in exposition
    assert "nothing-here" not in exposition
    assert http_requests(registry, "/metrics", "GET", 200) == 1  # counted once it finished


def test_memory_routes_report_their_full_templates(
    gateway: tuple[TestClient, CollectorRegistry],
) -> None:
    """The memory router's prefix is part of the template (it sits on the APIRouter)."""
    client, registry = gateway
    client.get("/v1/memories", params={"user_id": "someone-private"})
    client.post("/v1/memories/search", json={})
    assert observed(registry, "/v1/memories", "GET") == 1
    assert observed(registry, "/v1/memories/search", "POST") == 1
    assert "someone-private" not in client.get("/metrics").text


async def test_unknown_methods_share_one_label_value() -> None:
    """h11 passes any method token through: they must not become label values."""
    registry = CollectorRegistry()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    middleware = RequestContextMiddleware(app, GatewayMetrics(registry))
    for method in ("FOO1", "FOO2", "PROPFIND", "GET"):
        await middleware({"type": "http", "method": method, "headers": []}, receive, send)
    text = generate_latest(registry).decode()
    assert "FOO1" not in text and "PROPFIND" not in text
    assert http_requests(registry, "unmatched", "other", 405) == 3
    assert http_requests(registry, "unmatched", "GET", 405) == 1


def test_in_flight_returns_to_zero(gateway: tuple[TestClient, CollectorRegistry]) -> None:
    client, registry = gateway
    client.get("/livez")
    client.get("/nope")
    assert registry.get_sample_value("memgate_http_requests_in_flight") == 0
