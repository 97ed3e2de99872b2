"""The fast path for ``POST /v1/embeddings``: what it takes, and what it leaves to the app."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from embedder.fastpath import PATH, EmbeddingsFastPath
from embedder.schemas import EmbeddingRequest


class Recorder:
    """The inner app and the handler: who was called, with what."""

    def __init__(self) -> None:
        self.app_bodies: list[bytes] = []
        self.served: list[EmbeddingRequest] = []

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.app_bodies.append(body)
        await JSONResponse({"by": "app"}, status_code=400)(scope, receive, send)

    async def serve(self, request: EmbeddingRequest, raw: Request) -> Response:
        self.served.append(request)
        return JSONResponse({"by": "fast path"})


async def call(
    body: bytes,
    *,
    path: str = PATH,
    method: str = "POST",
    content_type: bytes | None = b"application/json",
    chunks: int = 1,
) -> tuple[Recorder, int, dict[str, str]]:
    recorder = Recorder()
    middleware = EmbeddingsFastPath(recorder.app, recorder.serve)
    size = max(1, -(-len(body) // chunks))
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    inbox: list[Message] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type)] if content_type else []
    scope: Scope = {"type": "http", "method": method, "path": path, "headers": headers}
    await middleware(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return recorder, status, json.loads(body_out)


async def test_a_well_formed_request_goes_straight_to_the_handler() -> None:
    body = json.dumps({"input": ["a", "b"], "encoding_format": "base64", "priority": 1}).encode()
    recorder, status, answer = await call(body, chunks=3)  # a body in several messages
    assert (status, answer) == (200, {"by": "fast path"})
    assert recorder.app_bodies == []
    [request] = recorder.served
    assert request.input == ["a", "b"] and request.priority == 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        json.dumps({"input": 5}).encode(),
        json.dumps({"input": ["a"], "priority": 5000}).encode(),
        json.dumps({"model": "x"}).encode(),
    ],
)
async def test_what_the_model_refuses_goes_to_the_app_with_its_body(body: bytes) -> None:
    recorder, status, answer = await call(body, chunks=2)
    assert (status, answer) == (400, {"by": "app"})
    assert recorder.app_bodies == [body] and recorder.served == []


@pytest.mark.parametrize(
    ("path", "method", "content_type"),
    [
        ("/health", "POST", b"application/json"),
        (PATH, "GET", b"application/json"),
        (PATH, "POST", b"text/plain"),
        (PATH, "POST", None),
    ],
)
async def test_other_requests_are_the_apps(
    path: str, method: str, content_type: bytes | None
) -> None:
    body = json.dumps({"input": "a"}).encode()
    recorder, status, _ = await call(body, path=path, method=method, content_type=content_type)
    assert status == 400 and recorder.app_bodies == [body] and recorder.served == []


async def test_the_content_type_may_carry_a_charset() -> None:
    body = json.dumps({"input": "a"}).encode()
    recorder, status, _ = await call(body, content_type=b"Application/JSON; charset=utf-8")
    assert status == 200 and len(recorder.served) == 1
