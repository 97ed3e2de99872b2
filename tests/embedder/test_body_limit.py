"""The embedder's body cap: 413 before an oversized body is read into memory."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from embedder.body_limit import EmbedderBodyLimit
from harness.process import wait_until
from tests.embedder.fake_encoder import FakeEncoder
from tests.embedder.test_app import client_for

LIMIT = 1024


class Script:
    """A client that sends ``parts`` (and then leaves), and what the server
    sent back; the inner app records the body it was handed."""

    def __init__(self, parts: list[bytes], declared: int | None = None) -> None:
        self.inbox: list[Message] = [
            {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
            for i, part in enumerate(parts)
        ]
        self.read = 0  # messages the server took
        self.sent: list[Message] = []
        self.app_bodies: list[bytes] = []
        headers = [(b"content-type", b"application/json")]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        self.scope: Scope = {"type": "http", "method": "POST", "path": "/v1/embeddings",
                             "headers": headers}  # fmt: skip

    async def receive(self) -> Message:
        self.read += 1
        return self.inbox.pop(0) if self.inbox else {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["more_body"] is False  # the whole body, at once
        self.app_bodies.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run(self) -> None:
        await EmbedderBodyLimit(self.app, LIMIT)(self.scope, self.receive, self.send)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])


async def test_a_declared_length_over_the_cap_is_refused_before_any_byte_is_read() -> None:
    script = Script([b"x" * 10], declared=LIMIT + 1)
    await script.run()
    assert script.read == 0
    assert script.status == 413
    assert script.app_bodies == []
    headers = dict(script.sent[0]["headers"])
    assert headers[b"connection"] == b"close"
    error = json.loads(script.sent[1]["body"])["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert str(LIMIT) in error["message"]


async def test_a_chunked_body_is_refused_once_it_passes_the_cap_and_not_read_further() -> None:
    parts = [b"x" * 400] * 10  # 4,000 bytes in all, no Content-Length
    script = Script(parts)
    await script.run()
    assert script.status == 413
    assert script.read == 3  # 1,200 bytes: past the cap; the other seven never taken
    assert script.app_bodies == []


async def test_a_body_within_the_cap_reaches_the_app_whole() -> None:
    parts = [b"a" * 300, b"b" * 300, b"c" * (LIMIT - 600)]
    script = Script(parts, declared=LIMIT)
    await script.run()
    assert script.status == 200
    assert script.app_bodies == [b"".join(parts)]


async def test_a_client_that_leaves_mid_body_gets_no_answer() -> None:
    script = Script([b"x" * 100])
    script.inbox[0]["more_body"] = True  # then the disconnect
    await script.run()
    assert script.sent == []
    assert script.app_bodies == []


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(lambda s: FakeEncoder(), max_body_bytes=LIMIT) as c:
        wait_until(lambda: c.get("/health").status_code == 200, 5)
        yield c


def test_the_service_refuses_an_oversized_request_and_serves_the_next(client: TestClient) -> None:
    big = client.post("/v1/embeddings", json={"input": ["word " * 400]})
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"
    small = client.post("/v1/embeddings", json={"input": ["hello"]})
    assert small.status_code == 200
    assert len(small.json()["data"]) == 1
    # The app's own refusals still come through the cap untouched.
    assert client.post("/v1/embeddings", json={"input": []}).status_code == 400
