"""gateway.limits' middleware in front of a small app: what it refuses before the app runs."""

from __future__ import annotations

import gzip

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.limits import RequestLimits, content_coding


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
