"""gateway.connections: the answer it writes, its classes, the open-file limit, and
the cap on a request's head, on a real socket against a real uvicorn server.

The rest of the protocol's behaviour on real sockets (deadlines, the connection
cap) is tested against a real gateway process in tests/e2e/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway import __main__ as entry
from gateway import connections
from gateway.connections import GuardedHttpToolsProtocol, error_response, guarded_protocol


def test_the_error_answer_is_a_whole_closing_response_in_openais_envelope() -> None:
    raw = error_response(408, "late", "request_timeout")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in lines and b"content-type: application/json" in lines
    assert f"content-length: {len(body)}".encode() in lines
    assert json.loads(body) == {  # every key of the envelope, as the app's own errors
        "error": {
            "message": "late",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }


def test_each_configuration_gets_its_own_class() -> None:
    a = guarded_protocol(header_timeout_s=1.5, max_header_bytes=2048, max_connections=3)
    b = guarded_protocol(header_timeout_s=9.0, max_header_bytes=4096, max_connections=7)
    assert issubclass(a, GuardedHttpToolsProtocol) and a is not b
    assert (a.header_timeout_s, a.max_header_bytes, a.max_connections) == (1.5, 2048, 3)
    assert GuardedHttpToolsProtocol.header_timeout_s == 10.0  # the base is untouched
    assert a.waiting is not b.waiting and not a.waiting  # each server its own waiting list


def test_the_soft_open_file_limit_is_raised_to_fit_the_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"now": (1024, 65536)}
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, value: limits.update(now=value))
    assert connections.make_fd_room(2048) == 2048 + connections.FD_HEADROOM
    assert limits["now"] == (2048 + connections.FD_HEADROOM, 65536)


def test_a_hard_limit_too_low_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (256, 1024))
    monkeypatch.setattr(resource, "setrlimit", lambda _kind, _value: None)
    assert connections.make_fd_room(2048) == 1024
    assert "GATEWAY_MAX_CONNECTIONS=2048" in caplog.text


def test_the_gateway_serves_with_the_guarded_protocol_and_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs: list[uvicorn.Config] = []
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GATEWAY_HEADER_TIMEOUT_S", "3.5")
    monkeypatch.setenv("GATEWAY_MAX_CONNECTIONS", "99")
    monkeypatch.setenv("GATEWAY_SEND_TIMEOUT_S", "7")
    monkeypatch.setattr(entry, "make_fd_room", lambda n: n)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    monkeypatch.setattr(entry, "freeze_startup_heap", lambda: 0)
    entry.main()
    protocol = configs[0].http
    assert isinstance(protocol, type) and issubclass(protocol, GuardedHttpToolsProtocol)
    assert (protocol.header_timeout_s, protocol.max_connections) == (3.5, 99)
    assert protocol.send_timeout_s == 7.0


# The protocol on a real socket, served by a real uvicorn server in this test's loop.

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Served:
    port: int
    reads: list[int]  # the size of each read the server's protocol got
    requests: list[str]  # the paths the app was called with


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    reads: list[int] = []
    requests: list[str] = []

    async def app(scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        requests.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    base = guarded_protocol(header_timeout_s=5, max_header_bytes=4096, max_connections=16)

    class Recording(base):  # type: ignore[misc, valid-type]
        def data_received(self, data: bytes) -> None:
            reads.append(len(data))
            super().data_received(data)

    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=Recording, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):  # uvicorn signals nothing when it listens; 5 s at most
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield Served(sock.getsockname()[1], reads, requests)
    finally:
        server.should_exit = True
        await task


async def exchange(port: int, *parts: bytes) -> bytes:
    """Send ``parts`` (each its own write, apart in time), then read the answer to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(0.05)  # so the server reads each part on its own
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed
    finally:
        writer.close()


def refusal(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.split(b"\r\n"), answer
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


HEAD_END = b"\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000,  # one long header
        b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-Many: aaaaaaaaaa\r\n" * 1000,  # many short
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: a",  # a long URL
    ],
    ids=["long-header", "many-headers", "long-url"],
)
async def test_a_head_over_the_cap_in_one_read_is_refused_with_431(
    served: Served, head: bytes
) -> None:
    # The whole head, end and all, in one write: the server reads it at once, so
    # only counting what the parser found (not what each read added) can see it.
    answer = await exchange(served.port, head + HEAD_END)
    assert served.reads == [len(head) + 4]  # it did come in one read
    status, error = refusal(answer)
    assert (status, error["code"]) == (431, "request_headers_too_large")
    assert error["message"] == "the request line and headers exceed 4096 bytes"
    assert served.requests == []  # the app never saw it


async def test_a_head_over_the_cap_is_refused_however_it_is_split(served: Served) -> None:
    head = b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-Many: aaaaaaaaaa\r\n" * 1000 + HEAD_END
    for parts in ([head[:3000], head[3000:]], [head[:100], head[100:5000], head[5000:]]):
        status, error = refusal(await exchange(served.port, *parts))
        assert (status, error["code"]) == (431, "request_headers_too_large")
    # Split inside one header too long for the cap: refused before it ends.
    status, _ = refusal(await exchange(served.port, b"GET /x HTTP/1.1\r\nX: ", b"a" * 5000))
    assert status == 431
    assert served.requests == []


async def test_a_head_under_the_cap_is_served_and_the_next_one_counted_afresh(
    served: Served,
) -> None:
    head = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Fill: " + b"a" * 3000 + HEAD_END
    # Two such requests in one read: each head is within the cap, their sum is not.
    answer = await exchange(served.port, head + head.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer
    assert served.requests == ["/x", "/x"]
