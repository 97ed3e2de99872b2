"""Hardening: bounded requests, bounded concurrency, admin separation, safe defaults."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from harness.fake_llm import RunningServer
from harness.process import ROOT, Service, wait_until
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def test_body_size_is_bounded(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_MAX_BODY_BYTES="4096")
    big = {"user_id": "u", "text": "x" * 5000}
    response = httpx.post(f"{gateway.url}/memories", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    for path in ("/chat/completions", "/memories"):
        chunked = httpx.post(f"{gateway.url}{path}", content=chunks(),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert chunked.status_code == 413, path
    assert llm.stats()["chat_requests"] == 0  # nothing too large went upstream
    assert httpx.post(f"{gateway.url}/chat/completions", json=CHAT).status_code == 200


def test_concurrency_is_bounded_with_429(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_MAX_CONCURRENCY="2")
    llm.set_behavior(mode="slow", delay_s=1.0, times=2)
    statuses: list[int] = []

    def slow_call() -> None:
        statuses.append(httpx.post(f"{gateway.url}/chat/completions", json=CHAT, timeout=10)
                        .status_code)  # fmt: skip

    workers = [threading.Thread(target=slow_call) for _ in range(2)]
    for worker in workers:
        worker.start()
    wait_until(lambda: llm.stats()["chat_requests"] == 2, 5)
    refused = httpx.post(f"{gateway.url}/chat/completions", json=CHAT)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert httpx.get(f"{gateway.base_url}/readyz").status_code == 200  # probes stay open
    for worker in workers:
        worker.join()
    assert statuses == [200, 200]
    assert httpx.post(f"{gateway.url}/chat/completions", json=CHAT).status_code == 200


def test_metadata_is_bounded_in_size_and_depth(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_MAX_METADATA_BYTES="256")
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(6):
        deep = {"d": deep}
    for metadata, fragment in [({"blob": "z" * 300}, "256"), (deep, "deeper than 5")]:
        response = httpx.post(f"{gateway.url}/memories",
                              json={"user_id": "u", "text": "t", "metadata": metadata})  # fmt: skip
        assert response.status_code == 400
        assert fragment in response.json()["error"]["message"]


def test_admin_endpoints_need_the_admin_key(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_API_KEYS="acme:ka,globex:kg",
                              GATEWAY_ADMIN_KEY="root-key")  # fmt: skip
    acme = {"Authorization": "Bearer ka"}
    root = {"Authorization": "Bearer root-key"}
    httpx.post(f"{gateway.url}/memories", headers=acme, json={"user_id": "ann", "text": "t"})
    base = gateway.base_url
    assert httpx.get(f"{base}/admin/outbox").status_code == 401
    assert httpx.get(f"{base}/admin/outbox", headers=acme).status_code == 403
    outbox = httpx.get(f"{base}/admin/outbox", headers=root).json()
    assert outbox == {"depth": 0, "dead": 0, "dead_entries": []}
    users = httpx.get(f"{base}/admin/tenants/acme/users", headers=root).json()
    assert users == {"tenant": "acme", "users": ["ann"]}
    assert httpx.get(f"{base}/admin/upstreams", headers=root).json()["status"] == "healthy"
    # The admin key is not a tenant key.
    assert httpx.get(f"{gateway.url}/memories?user_id=ann", headers=root).status_code == 403
    forgot = httpx.delete(f"{base}/admin/tenants/acme/users/ann", headers=root).json()
    assert forgot == {"tenant": "acme", "user_id": "ann", "deleted": 1}


def test_no_cors_headers_unless_configured(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    plain = gateway_factory(llm.url, embedder.url)
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    response = httpx.options(f"{plain.url}/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    cors = gateway_factory(llm.url, embedder.url, GATEWAY_CORS_ORIGINS="https://app.example")
    allowed = httpx.options(f"{cors.url}/chat/completions",
                            headers={**preflight, "Origin": "https://app.example"})  # fmt: skip
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in allowed.headers
    # What the official browser SDKs send (openai's JS SDK, Anthropic's) passes the preflight.
    sdk_headers = (
        "authorization,content-type,x-stainless-lang,x-stainless-os,x-stainless-retry-count,"
        "anthropic-version,anthropic-dangerous-direct-browser-access,x-api-key"
    )
    sdk = httpx.options(f"{cors.url}/chat/completions", headers={
        **preflight, "Origin": "https://app.example", "Access-Control-Request-Headers": sdk_headers,
    })  # fmt: skip
    assert sdk.status_code == 200, sdk.text
    from_evil = {**preflight, "Access-Control-Request-Headers": sdk_headers}
    evil = httpx.options(f"{cors.url}/chat/completions", headers=from_evil)
    assert "access-control-allow-origin" not in evil.headers


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GATEWAY_HOST": "0.0.0.0"}, "refusing to listen on 0.0.0.0 without API keys"),
        ({"GATEWAY_API_KEYS": "no-colon"}, "tenant:key"),
        ({"GATEWAY_PORT": "not-a-port"}, "GATEWAY_PORT: Input should be a valid integer"),
    ],
)
def test_unsafe_or_broken_configuration_refuses_to_start(
    env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env={"PATH": "", **env},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert expected in result.stderr
