"""Retries only where nothing was generated (issue 16, item 7).

A chat that timed out reading was retried: one request cost three full
generations, then a 504. The stand-in LLM counts the requests it received.
"""

from __future__ import annotations

import httpx
import pytest

from harness.fake_llm import RunningServer
from harness.process import Service
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}


def retries(gateway: Service) -> float:
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    lines = [line for line in metrics.splitlines()
             if line.startswith("memgate_upstream_retries_total{")]  # fmt: skip
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_request_the_upstream_went_silent_on_is_not_sent_again(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_READ_TIMEOUT_S="1",
                              GATEWAY_RETRY_ATTEMPTS="3")  # fmt: skip
    llm.set_behavior(mode="stall", times=3)  # sent, then nothing: it may be generating
    reply = httpx.post(f"{gateway.url}/chat/completions", json=CHAT, timeout=30)
    assert reply.status_code == 504
    assert reply.json()["error"]["type"] == "timeout_error"
    assert llm.stats()["chat_requests"] == 1  # one generation, not three
    assert retries(gateway) == 0


def test_an_upstream_504_is_not_retried_but_a_503_is(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_RETRY_ATTEMPTS="3")
    # A proxy's 504: the model behind it may still be generating.
    llm.set_behavior(mode="fail", status=504, times=1)
    assert httpx.post(f"{gateway.url}/chat/completions", json=CHAT, timeout=30).status_code == 504
    assert llm.stats()["chat_requests"] == 1
    # A 503 before any byte: refused, nothing generated, so another attempt is free.
    llm.set_behavior(mode="fail", status=503, times=1)
    assert httpx.post(f"{gateway.url}/chat/completions", json=CHAT, timeout=30).status_code == 200
    assert llm.stats()["chat_requests"] == 3
    assert retries(gateway) == 1
