"""gateway.limits' middleware in front of a small app: what it refuses before the app runs."""

from __future__ import annotations

import asyncio
import contextlib
import gzip

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import PRINCIPAL_KEY, Principal
from gateway.limits import RequestLimits, content_coding, tenant_share


def client() -> tuple[TestClient, list[bytes]]:
    bodies: list[bytes] = []

    async def echo(request: Request) -> JSONResponse:
        bodies.append(await request.body())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/x", echo, methods=["POST"])])
    return TestClient(RequestLimits(app, max_body_bytes=1 << 20, max_concurrency=4)), bodies


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "deflate", "br", "identity, gzip", "x-mine"])
def test_a_compressed_body_is_415_naming_its_coding_before_the_app_reads_it(coding: str) -> None:
    http, bodies = client()
    body = gzip.compress(b'{"model": "m"}')
    headers = {"content-type": "application/json", "content-encoding": coding}
    response = http.post("/v1/x", content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert response.headers["accept-encoding"] == "identity"
    assert response.json() == {
        "error": {
            "message": f"request body has Content-Encoding {coding!r}; only identity "
            "(an uncompressed body) is accepted",
            "type": "invalid_request_error",
            "code": "unsupported_media_type",
            "param": None,
        }
    }
    assert bodies == []  # the app never ran


@pytest.mark.parametrize("coding", [None, "identity", "Identity", "", " , identity"])
def test_an_identity_body_is_served(coding: str | None) -> None:
    http, bodies = client()
    headers = {} if coding is None else {"content-encoding": coding}
    assert http.post("/v1/x", content=b"{}", headers=headers).status_code == 200
    assert bodies == [b"{}"]


def test_every_content_encoding_header_counts() -> None:
    scope = {"headers": [(b"content-encoding", b"identity"), (b"content-encoding", b"gzip")]}
    assert content_coding(scope) == "identity, gzip"
    assert content_coding({"headers": [(b"content-encoding", b"identity")]}) is None


@pytest.mark.parametrize(
    ("configured", "tenants", "share"),
    [(None, 0, 512), (None, 1, 512), (None, 2, 256), (None, 9, 256), (10, 2, 10),
     (1000, 2, 512)],
)  # fmt: skip
def test_a_tenants_share_of_the_slots(configured: int | None, tenants: int, share: int) -> None:
    assert tenant_share(512, configured, tenants) == share
    assert tenant_share(1, None, 3) == 1  # never none at all


async def test_each_tenant_is_counted_apart_and_released() -> None:
    """Tenant a at its share is refused while b and the admin are served; a's slot
    is free again once its request ends, failed or not."""
    release, holding = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/hold":
            holding.set()
            await release.wait()
        if scope["path"] == "/fail":
            raise RuntimeError("the app failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = RequestLimits(app, max_body_bytes=1024, max_concurrency=4, max_per_tenant=1)

    async def call(path: str, principal: Principal) -> int:
        scope = {"type": "http", "path": path, "headers": [], "query_string": b"",
                 "state": {PRINCIPAL_KEY: principal}}  # fmt: skip
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        with contextlib.suppress(RuntimeError):
            await limits(scope, receive, send)
        return int(sent[0]["status"]) if sent else 0

    held = asyncio.create_task(call("/hold", Principal("a")))
    await holding.wait()
    assert await call("/x", Principal("a")) == 429
    assert await call("/x", Principal("b")) == 200
    assert await call("/x", Principal("admin", admin=True)) == 200
    release.set()
    assert await held == 200
    assert await call("/fail", Principal("a")) == 0  # failed: its slot is released all the same
    assert await call("/x", Principal("a")) == 200
    assert limits.in_flight == 0 and limits.in_flight_by_tenant == {}


@pytest.mark.parametrize(
    ("sent", "coding"),
    [("gzip, chunked", "gzip, chunked"), ("deflate,chunked", "deflate, chunked"), ("x", "x")],
)
def test_a_transfer_coding_besides_chunked_is_400_before_the_app_reads_it(
    sent: str, coding: str
) -> None:
    http, bodies = client()
    response = http.post("/v1/x", content=b"{}", headers={"transfer-encoding": sent})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_transfer_encoding"
    assert error["message"] == f"request has Transfer-Encoding {coding!r}; only chunked is accepted"
    assert response.headers["connection"] == "close" and bodies == []


def test_a_chunked_body_is_served() -> None:
    http, bodies = client()
    response = http.post("/v1/x", content=iter([b"{", b"}"]))  # sent chunked
    assert response.status_code == 200 and bodies == [b"{}"]
