"""The stand-in LLM server, driven as a real subprocess through the openai SDK and httpx."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import free_port

USER: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there world"},
]


@pytest.fixture(scope="module")
def shared() -> Iterator[RunningServer]:
    with start_llm_server() as server:
        yield server


@pytest.fixture
def llm(shared: RunningServer) -> RunningServer:
    shared.reset()
    return shared


def client(server: RunningServer, timeout: float = 5.0) -> OpenAI:
    return OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=timeout)


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_health_and_models(llm: RunningServer) -> None:
    r = httpx.get(f"{llm.base_url}/health")
    assert (r.status_code, r.json()) == (200, {})
    models = client(llm).models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    assert models.data[0].owned_by == "fake"

    llm.set_behavior(health_status=503)  # looks like vLLM still loading
    assert httpx.get(f"{llm.base_url}/health").status_code == 503
    with pytest.raises(openai.InternalServerError):
        client(llm).models.list()


def test_non_stream_echo_and_usage(llm: RunningServer) -> None:
    c = client(llm).chat.completions.create(model="m1", messages=USER)
    assert c.object == "chat.completion"
    assert c.model == "m1"
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content == "echo: hello there world"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage is not None
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 4, 9)


def test_content_parts_and_fixed_reply(llm: RunningServer) -> None:
    parts = [{"type": "text", "text": "from"}, {"type": "text", "text": "parts"}]
    messages: Any = [{"role": "user", "content": "old"}, {"role": "user", "content": parts}]
    c = client(llm).chat.completions.create(model="m", messages=messages)
    assert c.choices[0].message.content == "echo: from parts"

    llm.set_behavior(reply="fixed text")
    c = client(llm).chat.completions.create(model="m", messages=messages)
    assert c.choices[0].message.content == "fixed text"


def test_stream_reassembles_to_echo(llm: RunningServer) -> None:
    chunks = list(client(llm).chat.completions.create(model="m2", messages=USER, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content or "" for ch in chunks]
    assert "".join(pieces) == "echo: hello there world"
    assert sum(1 for p in pieces if p) == 4  # one content chunk per word
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {ch.model for ch in chunks} == {"m2"}
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"}

    body = {"model": "m", "messages": USER, "stream": True}
    r = httpx.post(f"{llm.url}/chat/completions", json=body)
    assert r.headers["content-type"] == "text/event-stream"
    assert r.text.endswith("data: [DONE]\n\n")
    assert all(e.startswith("data: ") for e in r.text.split("\n\n") if e)


def test_stream_include_usage(llm: RunningServer) -> None:
    stream = client(llm).chat.completions.create(
        model="m",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_requests_are_recorded(llm: RunningServer) -> None:
    oc = client(llm)
    oc.chat.completions.create(model="a", messages=USER, extra_headers={"X-Trace": "t1"})
    oc.chat.completions.create(model="b", messages=USER, stream=True).close()
    recorded = llm.requests()
    assert [r["body"]["model"] for r in recorded] == ["a", "b"]
    assert recorded[0]["body"]["messages"] == USER
    assert recorded[0]["headers"]["x-trace"] == "t1"
    assert recorded[0]["headers"]["authorization"] == "Bearer x"
    assert recorded[1]["body"]["stream"] is True
    assert llm.stats()["chat_requests"] == 2

    assert httpx.delete(f"{llm.base_url}/_control/requests").json() == {}
    assert llm.requests() == []


def test_fail_mode_status_and_retry_after(llm: RunningServer) -> None:
    llm.set_behavior(mode="fail", status=429, retry_after=2)
    with pytest.raises(openai.RateLimitError) as exc:
        client(llm).chat.completions.create(model="m", messages=USER)
    assert exc.value.status_code == 429
    assert exc.value.response.headers["retry-after"] == "2"
    assert exc.value.response.json()["error"]["type"] == "rate_limit_error"

    llm.set_behavior(mode="fail", status=503)
    with pytest.raises(openai.InternalServerError) as exc5:
        client(llm).chat.completions.create(model="m", messages=USER, stream=True)
    assert exc5.value.status_code == 503
    assert "retry-after" not in exc5.value.response.headers
    assert set(exc5.value.response.json()["error"]) == {"message", "type", "code"}


def test_raw_mode_answers_exactly_the_bytes_given(llm: RunningServer) -> None:
    llm.set_behavior(mode="raw", body="<html>oops</html>", content_type="text/html", times=1)
    body = {"model": "m", "messages": USER, "stream": True}
    reply = httpx.post(f"{llm.url}/chat/completions", json=body, timeout=5)
    assert (reply.status_code, reply.headers["content-type"]) == (200, "text/html")
    assert reply.text == "<html>oops</html>"
    assert llm.stats()["chat_requests"] == 1


def test_times_reverts_to_normal(llm: RunningServer) -> None:
    assert llm.set_behavior(mode="fail", status=500, times=2)["times"] == 2
    oc = client(llm)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oc.chat.completions.create(model="m", messages=USER)
    c = oc.chat.completions.create(model="m", messages=USER)
    assert c.choices[0].message.content == "echo: hello there world"
    assert llm.control("GET", "behavior") == {}


def test_slow_mode_spaces_chunks(llm: RunningServer) -> None:
    llm.set_behavior(mode="slow", delay_s=0.05)
    start = time.monotonic()
    stream = client(llm).chat.completions.create(model="m", messages=USER, stream=True)
    arrivals = [time.monotonic() - start for _ in stream]
    assert len(arrivals) == 6  # role, 4 words, stop (then [DONE], also after a delay)
    assert arrivals[0] >= 0.05
    assert arrivals[-1] - arrivals[0] >= 0.2


def test_stall_then_client_timeout_counts_disconnects(llm: RunningServer) -> None:
    llm.set_behavior(mode="stall")
    oc = client(llm, timeout=0.3)
    with oc.chat.completions.create(model="m", messages=USER, stream=True) as stream:
        it = iter(stream)
        assert next(it).choices[0].delta.role == "assistant"  # the first chunk, then nothing
        with pytest.raises(openai.APITimeoutError):
            next(it)
    eventually(lambda: llm.stats()["disconnects"] == 1)

    with pytest.raises(openai.APITimeoutError):
        oc.chat.completions.create(model="m", messages=USER)
    eventually(lambda: llm.stats()["disconnects"] == 2)
    assert llm.stats()["chat_requests"] == 2


async def test_stall_does_not_block_others_and_cancel_counts(llm: RunningServer) -> None:
    llm.set_behavior(mode="stall", times=1)
    body = {"model": "m", "messages": [{"role": "user", "content": "second"}]}
    async with httpx.AsyncClient(base_url=llm.url, timeout=5.0) as c:
        stalled = asyncio.create_task(c.post("/chat/completions", json=body))
        await asyncio.to_thread(eventually, lambda: llm.stats()["chat_requests"] == 1)
        r = await c.post("/chat/completions", json=body)
        assert r.json()["choices"][0]["message"]["content"] == "echo: second"
        assert not stalled.done()
        stalled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stalled
    eventually(lambda: llm.stats() == {"chat_requests": 2, "disconnects": 1})


def test_die_mid_stream_ends_stream_and_exits() -> None:
    with start_llm_server() as server:
        server.set_behavior(mode="die_mid_stream", chunks_before_death=2)
        stream = client(server).chat.completions.create(model="m", messages=USER, stream=True)
        received = []
        with pytest.raises((httpx.TransportError, openai.APIError)):
            for chunk in stream:
                received.append(chunk)
        assert [ch.choices[0].delta.content for ch in received] == [None, "echo: "]
        assert server.proc.wait(5) == 1


def test_die_exits_on_next_request() -> None:
    with start_llm_server() as server:
        server.set_behavior(mode="die")
        with pytest.raises(openai.APIConnectionError):
            client(server).chat.completions.create(model="m", messages=USER)
        assert server.proc.wait(5) == 1


def test_startup_delay_refuses_connections_first() -> None:
    port = free_port()
    start = time.monotonic()
    server = start_llm_server(port=port, startup_delay=0.8, wait=False)
    try:
        while time.monotonic() - start < 0.5:
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/health")
            time.sleep(0.05)
        server.wait_ready()
        assert time.monotonic() - start >= 0.8
        assert server.port == port
        assert httpx.get(f"{server.base_url}/health").status_code == 200
    finally:
        server.terminate()


def test_bad_requests_get_openai_errors(llm: RunningServer) -> None:
    r = httpx.post(f"{llm.url}/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(f"{llm.url}/chat/completions", json={"model": "m"}).status_code == 400
    assert httpx.get(f"{llm.base_url}/nowhere").status_code == 404
    for behavior in ({"mode": "explode"}, {"stauts": 500}, {"delay_s": "soon"}):
        r = httpx.post(f"{llm.base_url}/_control/behavior", json=behavior)
        assert r.status_code == 400, behavior
    assert llm.control("GET", "behavior") == {}


def test_latency_has_no_nagle_delay(llm: RunningServer) -> None:
    """Keep-alive round trips stay far below the ~40 ms that Nagle + delayed ACK would add."""
    body = {"model": "m", "messages": USER, "stream": True}
    with httpx.Client(base_url=llm.url) as c:
        for behavior in ({}, {"mode": "slow", "delay_s": 0}):  # slow: one write per event
            llm.set_behavior(**behavior)
            times = []
            for _ in range(100):
                start = time.perf_counter()
                assert c.post("/chat/completions", json=body).text.endswith("[DONE]\n\n")
                times.append(time.perf_counter() - start)
            assert statistics.median(times) < 0.01, behavior
