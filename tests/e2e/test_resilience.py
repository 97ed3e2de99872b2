"""Dependencies come and go; the gateway stays. Fault injection with real processes."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIStatusError, OpenAI

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import Service, free_port, wait_until
from tests.conftest import GatewayFactory
from tests.e2e.conftest import memories_of
from tests.support.stack import start_embedder, start_gateway

pytestmark = pytest.mark.e2e

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}]}


def chat(gateway: Service, timeout: float = 10.0, **extra: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/chat/completions", json={**CHAT, **extra}, timeout=timeout)


def readyz(gateway: Service) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{gateway.base_url}/readyz", timeout=2).json()
    return body


def llm_status(gateway: Service) -> str:
    checks = readyz(gateway)["checks"]
    assert isinstance(checks, dict)
    return str(checks["llm"]["status"])


def outbox_depth(gateway: Service) -> int:
    checks = readyz(gateway)["checks"]
    assert isinstance(checks, dict)
    return int(checks["outbox"]["depth"])


def sse_events(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_upstream_absent_at_start_then_appearing(
    gateway_factory: GatewayFactory, embedder: Service
) -> None:
    port = free_port()
    gateway = gateway_factory(f"http://127.0.0.1:{port}/v1", embedder.url, wait_ready=False)
    wait_until(lambda: readyz(gateway)["status"] == "not_ready", 5)
    assert llm_status(gateway) == "starting"

    started = time.monotonic()
    refused = chat(gateway)
    assert time.monotonic() - started < 0.5  # at once, not after a hang
    assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
    error = refused.json()["error"]
    assert error["code"] == "llm_starting" and "starting" in error["message"]

    with start_llm_server(port=port):
        back = time.monotonic()
        wait_until(lambda: chat(gateway).status_code == 200, 5, interval=0.05)
        assert time.monotonic() - back < 2.0
        assert readyz(gateway)["status"] == "ready"


def test_an_llm_nobody_answers_for_is_unreachable_not_starting(
    gateway_factory: GatewayFactory, embedder: Service
) -> None:
    port = free_port()
    gateway = gateway_factory(
        f"http://127.0.0.1:{port}/v1",
        embedder.url,
        wait_ready=False,
        GATEWAY_LLM_START_GRACE_S="0.5",
    )

    def unreachable() -> bool:
        refused = chat(gateway)
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
        return bool(refused.json()["error"]["code"] == "llm_unreachable")

    wait_until(unreachable, 10, interval=0.1, what="llm_unreachable past the grace period")
    message = chat(gateway).json()["error"]["message"]
    assert "connections refused ('primary' for" in message and "GATEWAY_LLM_URL" in message
    assert f"127.0.0.1:{port}" not in message  # no URL goes to clients
    assert llm_status(gateway) == "unavailable"  # /readyz: not "starting"

    with start_llm_server(port=port):  # and it is picked up when it appears after all
        wait_until(lambda: chat(gateway).status_code == 200, 5, interval=0.05)


def test_upstream_killed_and_restarted_under_steady_load(
    gateway_factory: GatewayFactory, embedder: Service
) -> None:
    port = free_port()
    llm = start_llm_server(port=port)
    gateway = gateway_factory(llm.url, embedder.url)
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                status = client.post(f"{gateway.url}/chat/completions", json=CHAT).status_code
                results.append((time.monotonic(), status))
                time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: sum(s == 200 for _, s in results) >= 20, 10)
        llm.kill()
        killed_at = time.monotonic()
        wait_until(lambda: any(t > killed_at and s == 503 for t, s in results), 5)
        time.sleep(0.5)  # steady load against a dead upstream for a while
        llm = start_llm_server(port=port)
        returned_at = time.monotonic()
        wait_until(lambda: any(t > returned_at and s == 200 for t, s in results), 5)
        first_success = min(t for t, s in results if t > returned_at and s == 200)
        wait_until(lambda: sum(t > first_success and s == 200 for t, s in results) >= 20, 10)
    finally:
        stop.set()
        worker.join()
        llm.terminate()
    after = [s for t, s in results if t > first_success]
    failures = [s for _, s in results if s != 200]
    recovery = first_success - returned_at
    print(f"\nrestart: {len(results)} requests, {len(failures)} failed (all 503 while down), "
          f"first success {recovery * 1000:.0f} ms after the upstream returned")  # fmt: skip
    assert set(failures) <= {503}  # failures are clean 503s, never hangs or 500s
    assert all(s == 200 for s in after)  # recovered by itself, no restart of the gateway
    assert recovery < 2.0


def test_death_mid_stream_gives_an_error_event_and_no_done(
    gateway_factory: GatewayFactory, embedder: Service
) -> None:
    llm = start_llm_server()
    gateway = gateway_factory(llm.url, embedder.url)
    llm.set_behavior(mode="die_mid_stream", chunks_before_death=3)
    events: list[str] = []
    arrived: list[float] = []
    body = {**CHAT, "stream": True, "user": "mid-stream"}
    with httpx.stream("POST", f"{gateway.url}/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                arrived.append(time.monotonic())
    # The upstream died right after its 3rd event: the error follows within a second.
    assert len(events) == 4 and arrived[3] - arrived[2] < 1.0
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["code"] == "upstream_stream_error" and error["message"]
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert (
        'memgate_upstream_requests_total{outcome="stream_error",upstream="primary"} 1.0' in metrics
    )
    # A broken reply is not remembered.
    assert memories_of(gateway, "mid-stream") == []
    llm.kill()


def test_a_stalled_stream_is_ended_after_the_idle_timeout(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_STREAM_IDLE_TIMEOUT_S="1")
    llm.set_behavior(mode="stall")
    started = time.monotonic()
    response = chat(gateway, stream=True)
    elapsed = time.monotonic() - started
    events = sse_events(response.text)
    assert 1.0 <= elapsed < 3.0
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_idle_timeout"
    assert "[DONE]" not in events


def test_client_disconnect_cancels_the_upstream_request(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url)
    llm.set_behavior(mode="slow", delay_s=0.5)
    with httpx.stream("POST", f"{gateway.url}/chat/completions",
                      json={**CHAT, "stream": True}, timeout=10) as response:  # fmt: skip
        next(response.iter_bytes())  # the stream has begun; now walk away
    wait_until(lambda: llm.stats()["disconnects"] >= 1, 5)
    llm.set_behavior(mode="stall")
    with pytest.raises(httpx.ReadTimeout):
        chat(gateway, timeout=0.5)  # a slow non-streamed call abandoned by its client
    wait_until(lambda: llm.stats()["disconnects"] >= 2, 5)
    # ... and answered as "client closed request", not as the gateway's own failure
    chat_route = 'memgate_http_requests_total{method="POST",route="/v1/chat/completions"'

    def metrics() -> str:
        return httpx.get(f"{gateway.base_url}/metrics").text

    wait_until(lambda: f'{chat_route},status="499"}}' in metrics(), 5)
    assert f'{chat_route},status="500"}}' not in metrics()
    assert "unhandled error" not in gateway.log()


def test_retries_hide_a_transient_503_and_honour_retry_after(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url)
    llm.set_behavior(mode="fail", status=503, retry_after=0.3, times=2)
    started = time.monotonic()
    assert chat(gateway).status_code == 200
    assert time.monotonic() - started >= 0.6  # waited as the upstream asked, twice
    assert llm.stats()["chat_requests"] == 3
    llm.set_behavior(mode="fail", status=400, times=1)
    bad = chat(gateway)
    assert bad.status_code == 400  # a client error is passed through, not retried
    assert llm.stats()["chat_requests"] == 4
    # and counted as the request's fault, not among the upstream's errors
    text = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'memgate_upstream_requests_total{outcome="rejected",upstream="primary"} 1.0' in text
    assert 'memgate_upstream_requests_total{outcome="http_error",upstream="primary"} 2.0' in text


def test_fallback_serves_when_the_primary_is_down(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(
        f"http://127.0.0.1:{free_port()}/v1", embedder.url,
        GATEWAY_FALLBACK_LLM_URL=llm.url, GATEWAY_FALLBACK_LLM_MODEL="cloud-model",
        GATEWAY_FALLBACK_LLM_API_KEY="cloud-secret",
    )  # fmt: skip
    client = OpenAI(base_url=gateway.url, api_key="x", max_retries=0)
    messages: Any = CHAT["messages"]
    reply = client.chat.completions.create(model="local-model", messages=messages)
    assert reply.choices[0].message.content == "echo: hello there"
    sent = llm.requests()[-1]
    assert sent["body"]["model"] == "cloud-model"
    assert sent["headers"]["authorization"] == "Bearer cloud-secret"
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'memgate_upstream_fallbacks_total{upstream="fallback"} 1.0' in metrics


def test_embedder_down_degrades_chat_queues_writes_and_replays(
    gateway_factory: GatewayFactory, llm: RunningServer, tmp_path: Path
) -> None:
    port = free_port()
    own_embedder = start_embedder(tmp_path / "emb", port=port)
    gateway = gateway_factory(llm.url, own_embedder.url)
    own_embedder.kill()
    # Still in rotation: every gateway sharing the embedder answers chat without
    # memory, and routing away from all of them would stop chat too.
    wait_until(lambda: readyz(gateway)["status"] == "degraded", 5)
    ready = httpx.get(f"{gateway.base_url}/readyz", timeout=2)
    assert ready.status_code == 200 and ready.json()["checks"]["embedder"]["status"] == "unhealthy"

    degraded = chat(gateway, user="carol")
    assert degraded.status_code == 200
    assert degraded.headers["x-memory-status"] == "degraded"
    queued = httpx.post(f"{gateway.url}/memories",
                        json={"user_id": "carol", "text": "Carol speaks Basque"})  # fmt: skip
    assert queued.status_code == 202 and queued.json()["queued"] is True
    # A queued memory's id works at once, and one deleted is never replayed.
    doomed = httpx.post(f"{gateway.url}/memories",
                        json={"user_id": "carol", "text": "Carol's PIN is 4711"})  # fmt: skip
    assert doomed.status_code == 202
    doomed_url = f"{gateway.url}/memories/{doomed.json()['results'][0]['id']}"
    assert httpx.get(doomed_url).json()["memory"] == "Carol's PIN is 4711"
    assert httpx.delete(doomed_url, params={"user_id": "bob"}).status_code == 404
    assert httpx.delete(doomed_url).json()["deleted"] is True
    assert httpx.get(doomed_url).status_code == 404
    assert outbox_depth(gateway) >= 2
    search = httpx.post(f"{gateway.url}/memories/search", json={"user_id": "carol", "query": "x"})
    assert search.status_code == 503 and "retry-after" in search.headers

    restarted = start_embedder(tmp_path / "emb", port=port)
    try:
        wait_until(lambda: outbox_depth(gateway) == 0, 15)
        stored = memories_of(gateway, "carol")
        assert sorted(stored) == sorted(["Carol speaks Basque", "hello there", "echo: hello there"])
        again = chat(gateway, user="carol")
        assert "x-memory-status" not in again.headers
    finally:
        restarted.terminate()


def test_memory_required_turns_degraded_into_503(
    gateway_factory: GatewayFactory, llm: RunningServer
) -> None:
    gateway = gateway_factory(
        llm.url, f"http://127.0.0.1:{free_port()}/v1", GATEWAY_MEMORY_REQUIRED="true",
        wait_ready=False,
    )  # fmt: skip
    response = chat(gateway, user="dave")
    assert response.status_code == 503 and response.json()["error"]["code"] == "memory_unavailable"
    assert chat(gateway).status_code == 200  # no user named: memory is not involved
    # And out of rotation: a memory outage is a 503 for its users' chats too.
    assert readyz(gateway)["checks"]["embedder"]["status"] != "healthy"  # type: ignore[index]
    assert httpx.get(f"{gateway.base_url}/readyz", timeout=2).status_code == 503
    assert readyz(gateway)["status"] == "not_ready"


def test_sigkill_with_queued_writes_loses_and_duplicates_nothing(
    llm: RunningServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    embedder_port = free_port()
    embedder_url = f"http://127.0.0.1:{embedder_port}/v1"
    gateway = start_gateway(data_dir, llm.url, embedder_url, wait_ready=False)
    answered: dict[str, int] = {}
    for i in range(20):
        text = f"fact number {i} about erin"
        response = httpx.post(f"{gateway.url}/memories", json={"user_id": "erin", "text": text})
        answered[text] = response.status_code
    client = OpenAI(base_url=gateway.url, api_key="x", max_retries=0)
    kites: Any = [{"role": "user", "content": "erin likes kites"}]
    client.chat.completions.create(model="fake-model", user="erin", messages=kites)
    wait_until(lambda: outbox_depth(gateway) == 21, 5)
    gateway.proc.send_signal(signal.SIGKILL)
    gateway.proc.wait()

    embedder = start_embedder(tmp_path / "emb", port=embedder_port)
    again = start_gateway(data_dir, llm.url, embedder_url)
    try:
        wait_until(lambda: outbox_depth(again) == 0, 20)
        stored = memories_of(again, "erin")
        assert set(answered.values()) == {202}
        expected = [*answered, "erin likes kites", "echo: erin likes kites"]
        assert sorted(stored) == sorted(expected)  # every accepted write, exactly once
        for text in answered:  # and each is searchable
            query = {"user_id": "erin", "query": text, "top_k": 1}
            hits = httpx.post(f"{again.url}/memories/search", json=query).json()
            assert hits["results"][0]["memory"] == text
    finally:
        again.terminate()
        embedder.terminate()


def test_sigterm_lets_an_in_flight_stream_finish(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url)
    llm.set_behavior(mode="slow", delay_s=0.2)
    chunks: list[str] = []
    with httpx.stream("POST", f"{gateway.url}/chat/completions",
                      json={**CHAT, "stream": True}, timeout=10) as response:  # fmt: skip
        lines = response.iter_lines()
        chunks.append(next(lines))
        gateway.proc.send_signal(signal.SIGTERM)
        chunks.extend(lines)
    assert "data: [DONE]" in chunks
    # uvicorn re-raises SIGTERM once its graceful shutdown is done.
    assert gateway.proc.wait(15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in gateway.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.base_url}/livez")


def test_sigterm_past_the_grace_ends_what_is_in_flight_in_words(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # An LLM that never finishes: a stream stops after its first event, a
    # completion never comes. Past the grace each client is told, in OpenAI's
    # terms, that the gateway is going away; nothing is cut without a word.
    gateway = gateway_factory(llm.url, embedder.url, GATEWAY_SHUTDOWN_GRACE_S="1")
    llm.set_behavior(mode="stall")
    waiting: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: waiting.update(answer=chat(gateway, timeout=30)))
    thread.start()
    with httpx.stream("POST", f"{gateway.url}/chat/completions",
                      json={**CHAT, "stream": True}, timeout=30) as response:  # fmt: skip
        lines = response.iter_lines()
        received = [next(lines)]  # the stream has begun
        wait_until(lambda: len(llm.requests()) == 2, 5)  # and the completion waits
        gateway.proc.send_signal(signal.SIGTERM)
        received.extend(lines)
    thread.join(30)
    events = sse_events("\n".join(received))
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "gateway_shutting_down"
    answer = waiting["answer"]
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "gateway_shutting_down"
    assert gateway.proc.wait(15) in (0, -signal.SIGTERM)
    log = gateway.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log and "timeout graceful shutdown exceeded" not in log


def test_ctrl_c_shuts_down_without_a_traceback(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    gateway = gateway_factory(llm.url, embedder.url)
    gateway.proc.send_signal(signal.SIGINT)
    assert gateway.proc.wait(15) == 130
    log = gateway.log()
    assert "Application shutdown complete" in log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log


def test_a_hang_up_shuts_down_as_a_sigterm_does(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service
) -> None:
    # Its default action killed the process on the spot: no drain, no line in the log.
    gateway = gateway_factory(llm.url, embedder.url)
    gateway.proc.send_signal(signal.SIGHUP)
    assert gateway.proc.wait(15) == -signal.SIGTERM
    log = gateway.log()
    assert "SIGHUP: shutting down as on SIGTERM" in log
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_openai_sdk_sees_a_clean_503_when_nothing_can_serve(
    gateway_factory: GatewayFactory, embedder: Service
) -> None:
    gateway = gateway_factory(f"http://127.0.0.1:{free_port()}/v1", embedder.url, wait_ready=False)
    client = OpenAI(base_url=gateway.url, api_key="x", max_retries=0)
    messages: Any = CHAT["messages"]
    with pytest.raises(APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=messages)
    assert caught.value.status_code == 503
