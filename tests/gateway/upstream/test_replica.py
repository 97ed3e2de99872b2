"""Upstream against a real socket whose server drops reused connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.monitor import ProbeFailed
from gateway.upstream.http import Disconnected, UpstreamHTTP, timeouts_for
from gateway.upstream.replica import Call, Upstream
from tests.support.dropping_server import Json, dropping_server

TIMEOUTS = timeouts_for(read_s=5.0, connect_s=5.0)


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    async with UpstreamHTTP() as client:
        yield client


def llm(path: str, body: Json) -> Json:
    if path.endswith("/models"):
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}
    if path.endswith("/health"):
        return {}
    return {"object": "chat.completion", "model": body["model"], "choices": []}


async def test_a_chat_on_a_dropped_connection_goes_once_more(http: UpstreamHTTP) -> None:
    async with dropping_server(llm) as server:
        upstream = Upstream("vllm", f"{server.url}/v1", http)
        for _ in range(2):  # the second reuses the first's connection, which is dropped
            response = await upstream.send_chat(
                b'{"model": "m"}', request_id="r", timeouts=TIMEOUTS
            )
            assert (await response.aread(), response.status_code) == (
                b'{"object": "chat.completion", "model": "m", "choices": []}',
                200,
            )
            await response.aclose()
        assert server.answered == ["/v1/chat/completions"] * 2


async def test_a_probe_on_a_dropped_connection_goes_once_more(http: UpstreamHTTP) -> None:
    async with dropping_server(llm) as server:
        upstream = Upstream("vllm", f"{server.url}/v1", http)
        await upstream.probe()  # /health, then /v1/models on the same, dropped, connection
        assert upstream.model_ids == {"m"}
        assert server.answered == ["/health", "/v1/models"]


async def test_a_server_that_never_answers_fails_the_send_and_the_probe(
    http: UpstreamHTTP,
) -> None:
    async with dropping_server(llm, drop_every_request=True) as server:
        upstream = Upstream("vllm", f"{server.url}/v1", http)
        with pytest.raises(Disconnected):
            await upstream.send_chat(b"{}", request_id=None, timeouts=TIMEOUTS)
        with pytest.raises(ProbeFailed, match="Disconnected"):
            await upstream.probe()
        assert server.connections == 4  # each sent twice, no more


class NoHealthServer(UpstreamHTTP):
    """A server without /health (like llama.cpp's Python server) whose completion
    takes until ``done`` is set; records every URL asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []
        self.done = asyncio.Event()

    async def request(self, method: str, url: str, **_: Any) -> Any:
        self.asked.append(url.rsplit("/", 1)[-1])
        if url.endswith("/health"):
            return FakeReply(404, b"{}")
        if url.endswith("/models"):
            return FakeReply(200, b'{"data": [{"id": "smollm2"}]}')
        await self.done.wait()  # the completion's headers come when it is done
        return FakeReply(200, b"{}")


class FakeReply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self._body, self.closed = status, body, False

    async def aread(self) -> bytes:
        return self._body

    async def aclose(self) -> None:
        self.closed = True


async def test_a_server_without_health_is_not_asked_for_its_models_while_it_answers_us() -> None:
    server = NoHealthServer()
    upstream = Upstream("local", "http://127.0.0.1:1/v1", server)
    await upstream.probe()
    assert server.asked == ["health", "models"] and not upstream.busy

    sending = asyncio.create_task(upstream.send_chat(b"{}", request_id=None, timeouts=TIMEOUTS))
    await asyncio.sleep(0)
    assert upstream.busy
    await upstream.probe()  # /v1/models would wait for the completion, or cut it off
    assert server.asked[2:] == ["completions", "health"]

    server.done.set()
    reply = await sending
    assert upstream.busy  # its body is still being relayed
    await reply.aclose()
    assert not upstream.busy
    await upstream.probe()
    assert server.asked[-2:] == ["health", "models"]
    await server.aclose()


class RecordingServer(UpstreamHTTP):
    """Answers everything 200 and records each URL asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    async def request(self, method: str, url: str, **_: Any) -> Any:
        self.urls.append(url)
        return FakeReply(200, b'{"data": [{"id": "m"}]}')


async def test_a_base_url_with_a_query_string_gets_paths_on_its_path() -> None:
    server = RecordingServer()
    upstream = Upstream("azure", "http://h:8000/v1?api-version=x", server)
    await upstream.probe()
    await upstream.send_chat(b"{}", request_id=None, timeouts=TIMEOUTS)
    await upstream.send(Call("/tokenize", root=True), b"{}", request_id=None, timeouts=TIMEOUTS)
    await upstream.send(
        Call("/models", "GET", query="a=1"), None, request_id=None, timeouts=TIMEOUTS
    )
    assert server.urls == [
        "http://h:8000/health?api-version=x",
        "http://h:8000/v1/models?api-version=x",
        "http://h:8000/v1/chat/completions?api-version=x",
        "http://h:8000/tokenize?api-version=x",
        "http://h:8000/v1/models?api-version=x&a=1",
    ]
    await server.aclose()
