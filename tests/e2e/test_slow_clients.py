"""Clients that hold connections by being slow (gateway.connections).

Slowloris: connections that send their request line and headers a byte a
second, or nothing at all; and a client that asks for a long stream and never
reads it. Against a real gateway process, with raw sockets (no client library
is that slow on purpose). Without the header deadline uvicorn holds the first
kind for ever; without the connection cap, enough of them run the process out
of file descriptors; without the send deadline the reader holds its slot.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from harness.fake_llm import RunningServer
from harness.process import Service, wait_until
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e


class RawConnection:
    """One client socket: what it sent, what came back, and whether it was closed."""

    def __init__(self, port: int, first: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.answer = b""
        self.closed = False
        self.lock = threading.Lock()
        if first:
            self.sock.sendall(first)

    def send(self, data: bytes) -> None:
        with self.lock:
            if not self.closed:
                try:
                    self.sock.sendall(data)
                except OSError:
                    self.closed = True

    def poll(self) -> bool:
        """Read what is there without blocking long; whether the gateway closed it."""
        with self.lock:
            while not self.closed:
                self.sock.settimeout(0.02)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    break
                except OSError:
                    self.closed = True
                    break
                self.answer += data
                self.closed = not data
            return self.closed

    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else 0

    def error(self) -> dict[str, object]:
        return dict(json.loads(self.answer.partition(b"\r\n\r\n")[2])["error"])

    def close(self) -> None:
        with self.lock:
            self.sock.close()


@contextmanager
def dripping(connections: list[RawConnection], byte: bytes = b"a") -> Iterator[None]:
    """Each connection sends one more header byte a second while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1.0):
            for connection in connections:
                connection.send(byte)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for connection in connections:
            connection.close()


def _served(gateway: Service) -> None:
    assert httpx.get(f"{gateway.base_url}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{gateway.url}/models", timeout=5).status_code == 200


def test_slow_headers_are_cut_off_at_the_deadline_while_others_are_served(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_HEADER_TIMEOUT_S="2")
    started = time.monotonic()
    # A request line, then a header that never ends, a byte a second.
    slow = [RawConnection(gateway.port, b"GET /v1/models HTTP/1.1\r\nX-Slow: ") for _ in range(10)]
    silent = [RawConnection(gateway.port) for _ in range(3)]
    # A keep-alive connection whose second request is slow: its own deadline.
    again = RawConnection(gateway.port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: b"\r\n\r\n" in again.answer or again.poll(), 5, what="first answer")
    assert again.status() == 200 and not again.closed
    again.answer = b""
    again.send(b"GET /livez HTTP/1.1\r\nX-Slow: ")
    everyone = [*slow, *silent, again]
    with dripping([*slow, again]):
        _served(gateway)  # while all of them are open
        assert not any(c.poll() for c in everyone), "closed before the deadline"
        wait_until(lambda: all(c.poll() for c in everyone), 10, what="every slow client closed")
        assert time.monotonic() - started >= 2.0
        for connection in [*slow, again]:
            assert connection.status() == 408, connection.answer
            assert connection.error()["code"] == "request_timeout"
            assert b"connection: close" in connection.answer.lower()
        assert [c.answer for c in silent] == [b""] * len(silent)  # nothing to answer
        _served(gateway)


def test_a_flood_of_silent_connections_ages_out_at_the_connection_cap(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # A deadline far off, so only the cap can close anything during the test.
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_HEADER_TIMEOUT_S="120", GATEWAY_MAX_CONNECTIONS="8"
    )
    flood = []
    for _ in range(20):
        flood.append(RawConnection(gateway.port))
        # One at a time, so which ones are the oldest is not up to the scheduler.
        wait_until(lambda: sum(not c.poll() for c in flood) <= 8, 5, what="room made")
    try:
        assert [c.closed for c in flood] == [True] * 12 + [False] * 8  # the oldest went
        _served(gateway)  # a client sending its request at once still gets in
        assert sum(c.poll() for c in flood) >= 12 + 1
    finally:
        for connection in flood:
            connection.close()


CHUNKED_PROBE = b"GET /livez HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
CHUNK = b"1\r\na\r\n"


def answered(connection: RawConnection) -> bool:
    connection.poll()
    return b"\r\n\r\n" in connection.answer


def test_a_body_left_unread_by_an_early_answer_must_end_by_the_deadline(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # A probe answers at once, before the chunked body it was sent has ended.
    # uvicorn then waited for the rest with no timer (each chunk cancelled its
    # keep-alive timeout): a client dripping chunks held the connection for ever.
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_HEADER_TIMEOUT_S="2")
    drippers = [RawConnection(gateway.port, CHUNKED_PROBE) for _ in range(3)]
    finisher = RawConnection(gateway.port, CHUNKED_PROBE)
    wait_until(lambda: all(answered(c) for c in [*drippers, finisher]), 5, what="answers")
    answered_at = time.monotonic()
    assert [c.status() for c in [*drippers, finisher]] == [200] * 4
    finisher.send(b"0\r\n\r\n")  # its body ends in time: kept alive for the next request
    finisher.answer = b""
    finisher.send(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_until(lambda: answered(finisher), 5, what="the next request's answer")
    assert finisher.status() == 200 and not finisher.closed
    with dripping(drippers, CHUNK):
        wait_until(lambda: all(c.poll() for c in drippers), 10, what="every dripper closed")
        assert time.monotonic() - answered_at >= 1.5  # not before the deadline
        assert not finisher.poll()
        _served(gateway)
    finisher.close()


def test_connections_answered_before_their_body_ended_age_out_at_the_cap(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_HEADER_TIMEOUT_S="120", GATEWAY_MAX_CONNECTIONS="8"
    )
    flood: list[RawConnection] = []
    with dripping(flood, CHUNK):
        for _ in range(20):
            flood.append(RawConnection(gateway.port, CHUNKED_PROBE))
            # Each answered before the next opens, so which are the oldest is known.
            wait_until(lambda: answered(flood[-1]), 5, what="answer")
            wait_until(lambda: sum(not c.poll() for c in flood) <= 8, 5, what="room made")
        assert [c.closed for c in flood] == [True] * 12 + [False] * 8  # the oldest went
        _served(gateway)  # a client sending its request at once still gets in


def test_oversized_or_malformed_request_heads_get_an_openai_error(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_MAX_HEADER_BYTES="4096")
    huge = RawConnection(gateway.port, b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 20_000)
    wait_until(huge.poll, 5, what="huge headers refused")
    assert huge.status() == 431, huge.answer
    assert huge.error()["code"] == "request_headers_too_large"
    # A whole head, its end included, sent at once (read at once): refused all the same.
    whole = RawConnection(
        gateway.port, b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 120_000 + b"\r\n\r\n"
    )
    wait_until(whole.poll, 5, what="a whole huge head refused")
    assert whole.status() == 431, whole.answer[:200]
    garbage = RawConnection(gateway.port, b"\x00\x01 not http\r\n\r\n")
    wait_until(garbage.poll, 5, what="garbage refused")
    assert garbage.status() == 400, garbage.answer
    assert garbage.error() == {
        "message": "malformed HTTP request",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_http_request",
    }
    # A chunked body found broken while the app reads it: the same answer.
    for chunk in (b"zz\r\nabc\r\n0\r\n\r\n", b"fffffffffffffffffff\r\nabc"):
        broken = RawConnection(
            gateway.port,
            b"POST /v1/memories HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk,
        )
        wait_until(broken.poll, 5, what="broken chunked body refused")
        assert broken.status() == 400, broken.answer
        assert broken.error()["code"] == "invalid_http_request"
    # Headers under the limit are served as ever.
    fits = httpx.get(f"{gateway.base_url}/livez", headers={"x-big": "a" * 3000}, timeout=5)
    assert fits.status_code == 200
    _served(gateway)


def test_a_client_that_never_reads_its_stream_is_dropped_and_frees_its_slot(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_SEND_TIMEOUT_S="2", GATEWAY_MAX_CONCURRENCY="1"
    )
    llm.set_behavior(reply="word " * 100_000, times=1)  # some 20 MB of events
    body = json.dumps(
        {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    reader = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    reader.connect(("127.0.0.1", gateway.port))
    reader.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    reader.settimeout(5)
    assert reader.recv(12).startswith(b"HTTP/1.1 200")  # the stream began; now read no more
    chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

    def slot_free() -> bool:
        answer = httpx.post(f"{gateway.url}/chat/completions", json=chat, timeout=10)
        assert answer.status_code in (200, 429), answer.text
        return answer.status_code == 200

    try:
        assert not slot_free()  # the reader holds the only slot...
        started = time.monotonic()
        wait_until(slot_free, 15, interval=0.2, what="the unread stream's slot freed")
        assert time.monotonic() - started >= 1.0  # ...until the send deadline, not at once
    finally:
        reader.close()
