"""Nobody without a key can lock tenants out (issue 16, item 3).

The attack that worked: many connections with a bogus key announcing a large
body and sending one byte a second. The gateway read the body before it
checked the key, while holding a concurrency slot, with no deadline, so every
tenant got 429 for as long as the attack lasted. Real gateway process, raw
sockets for the attacker (no client library sends that slowly on purpose).
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

KEY = "acme-key-1"
GLOBEX = "globex-key-1"
ADMIN = "admin-key-1"
ROUTES = ["/v1/memories/search", "/v1/memories", "/v1/chat/completions", "/admin/models"]


class SlowClient:
    """One connection that announces ``length`` body bytes and sends them one at a time."""

    def __init__(self, port: int, path: str, key: str, length: int = 100_000) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
        )
        self.sock.sendall(head.encode())
        self.answer = b""
        self.closed = False
        self.lock = threading.Lock()

    def drip(self) -> None:
        """Send one more body byte, unless the gateway has answered or closed."""
        with self.lock:
            if self.closed or self.answered():
                return
            try:
                self.sock.sendall(b" ")
            except OSError:
                self.closed = True

    def answered(self) -> bool:
        """A whole answer is in: its head, and as many body bytes as it announced."""
        head, sep, body = self.answer.partition(b"\r\n\r\n")
        if not sep:
            return False
        for line in head.lower().split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name == b"content-length":
                return len(body) >= int(value)
        return True

    def poll(self) -> bool:
        """Whether the gateway has answered or closed (reads what is there, without
        blocking long)."""
        with self.lock:
            if not self.answered() and not self.closed:
                self.sock.settimeout(0.05)
                try:
                    data = self.sock.recv(65536)
                    self.answer += data
                    self.closed = not data
                except TimeoutError:
                    pass
                except OSError:
                    self.closed = True
            return self.answered() or self.closed

    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else 0

    def error(self) -> dict[str, object]:
        body = self.answer.partition(b"\r\n\r\n")[2]
        return dict(json.loads(body)["error"])

    def close(self) -> None:
        with self.lock:
            self.sock.close()


@contextmanager
def dripping(clients: list[SlowClient]) -> Iterator[None]:
    """Each client sends a byte a second while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(1.0):
            for client in clients:
                client.drip()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for client in clients:
            client.close()


def _legitimate_calls_succeed(gateway: Service, key: str = KEY) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    base = gateway.url
    added = httpx.post(f"{base}/memories", headers=headers,
                       json={"user_id": "ann", "text": "Ann keeps bees"}, timeout=20)  # fmt: skip
    assert added.status_code in (201, 202), added.text
    search = httpx.post(f"{base}/memories/search", headers=headers,
                        json={"user_id": "ann", "query": "bees"}, timeout=20)  # fmt: skip
    assert search.status_code == 200, search.text
    hello = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    chat = httpx.post(f"{base}/chat/completions", headers=headers, json=hello, timeout=20)
    assert chat.status_code == 200, chat.text
    admin = httpx.get(f"{gateway.base_url}/admin/models", timeout=20,
                      headers={"Authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert admin.status_code == 200, admin.text


def test_slow_clients_without_a_key_lock_nobody_out(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_API_KEYS=f"acme:{KEY}", GATEWAY_ADMIN_KEY=ADMIN,
        GATEWAY_MAX_CONCURRENCY="4",
    )  # fmt: skip
    # Five times the slots, on every kind of route, each with a big body to come.
    attackers = [SlowClient(gateway.port, ROUTES[i % len(ROUTES)], "bogus") for i in range(20)]
    with dripping(attackers):
        # Each is refused from its headers alone, without waiting for the body...
        wait_until(lambda: all(a.poll() for a in attackers), 10, what="every bogus key refused")
        assert [a.status() for a in attackers] == [401] * len(attackers)
        assert attackers[0].error()["code"] == "invalid_api_key"
        # ...and tenants are served meanwhile.
        _legitimate_calls_succeed(gateway)
    assert llm.stats()["chat_requests"] == 1  # only the tenant's chat went upstream


def test_one_tenant_holds_at_most_its_share_of_the_slots(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # With one counter for everyone, acme's slow requests (or long streams, or a
    # leaked key) could take every slot and give globex 429 for as long as they last.
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_API_KEYS=f"acme:{KEY},globex:{GLOBEX}",
        GATEWAY_ADMIN_KEY=ADMIN, GATEWAY_MAX_CONCURRENCY="4",
    )  # fmt: skip
    hogs = [SlowClient(gateway.port, "/v1/memories/search", KEY) for _ in range(3)]
    with dripping(hogs):
        # Two tenants: each may hold half of the 4 slots, so one of the three is refused.
        wait_until(lambda: any(h.poll() for h in hogs), 10, what="acme over its share")
        refused = [h for h in hogs if h.poll()]
        assert len(refused) == 1 and refused[0].status() == 429
        assert refused[0].error()["code"] == "too_many_concurrent_requests"
        assert "its share" in str(refused[0].error()["message"])
        assert b"retry-after: 1" in refused[0].answer.lower()
        _legitimate_calls_succeed(gateway, GLOBEX)  # globex still finds room
        assert not any(h.poll() for h in hogs if h is not refused[0])  # acme's two still held


def test_a_slow_body_gets_408_and_frees_its_slot(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        llm.url, embedder.url, GATEWAY_API_KEYS=f"acme:{KEY}", GATEWAY_ADMIN_KEY=ADMIN,
        GATEWAY_MAX_CONCURRENCY="2", GATEWAY_BODY_TIMEOUT_S="2",
    )  # fmt: skip
    # With a valid key, slow senders do get slots, but only until the deadline.
    started = time.monotonic()
    slow = [SlowClient(gateway.port, path, KEY) for path in ROUTES[:2]]
    with dripping(slow):
        wait_until(lambda: all(s.poll() for s in slow), 15, what="slow bodies answered")
        elapsed = time.monotonic() - started
        assert [s.status() for s in slow] == [408, 408]
        assert slow[0].error()["code"] == "request_timeout"
        assert b"connection: close" in slow[0].answer.lower()
        assert elapsed >= 2.0
        _legitimate_calls_succeed(gateway)
