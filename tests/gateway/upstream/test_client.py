"""Upstream against a real socket whose server drops reused connections."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.monitor import ProbeFailed
from gateway.upstream.client import Upstream
from gateway.upstream.http import Disconnected, UpstreamHTTP, timeouts_for
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
