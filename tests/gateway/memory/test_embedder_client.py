"""EmbedderClient against a real socket whose server drops reused connections,
with the app's aiohttp pool and with an httpx client (the unit tests' fakes)."""

from __future__ import annotations

import array
import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import prometheus_client
import pytest

from gateway.exceptions import EmbedderRejected, EmbedderUnavailable
from gateway.memory.embedder_client import IN_FLIGHT, PART_TEXTS, EmbedderClient
from gateway.metrics import GatewayMetrics
from gateway.monitor import ProbeFailed
from gateway.upstream.http import UpstreamHTTP
from tests.support.dropping_server import DroppingServer, Json, dropping_server

Http = UpstreamHTTP | httpx.AsyncClient
CLIENTS: dict[str, Callable[[], AbstractAsyncContextManager[Http]]] = {
    "aiohttp": UpstreamHTTP,
    "httpx": httpx.AsyncClient,
}

DIM = 4
ZEROS = base64.b64encode(bytes(4 * DIM)).decode()  # DIM float32 zeros


def embedder(path: str, body: Json) -> Json:
    if path.endswith("/health"):
        return {"status": "ok", "dimension": DIM}
    return {"data": [{"index": i, "embedding": ZEROS} for i in range(len(body["input"]))]}


def client_of(server: DroppingServer, http: Http) -> EmbedderClient:
    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    return EmbedderClient(http, f"{server.url}/v1", DIM, metrics)


@pytest.fixture(params=sorted(CLIENTS))
def make_http(request: pytest.FixtureRequest) -> Callable[[], AbstractAsyncContextManager[Http]]:
    return CLIENTS[request.param]


@pytest.fixture
async def served(
    make_http: Callable[[], AbstractAsyncContextManager[Http]],
) -> AsyncIterator[tuple[DroppingServer, EmbedderClient]]:
    async with dropping_server(embedder) as server, make_http() as http:
        yield server, client_of(server, http)


async def test_a_dropped_keepalive_connection_is_retried_on_a_fresh_one(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    for _ in range(3):
        assert await client.embed(["a", "b"]) == [[0.0] * DIM, [0.0] * DIM]
    assert server.answered == ["/v1/embeddings"] * 3
    assert server.connections == 3  # one per answer; each later call was first dropped


async def test_the_health_probe_survives_a_dropped_connection(
    served: tuple[DroppingServer, EmbedderClient],
) -> None:
    server, client = served
    await client.probe()
    await client.probe()  # raises ProbeFailed without the resend
    # The route is checked until it has answered once; later probes read /health.
    assert server.answered == ["/health", "/v1/embeddings", "/health"]


async def test_a_server_that_never_answers_is_still_unavailable(
    make_http: Callable[[], AbstractAsyncContextManager[Http]],
) -> None:
    async with (
        dropping_server(embedder, drop_every_request=True) as server,
        make_http() as http,
    ):
        client = client_of(server, http)
        with pytest.raises(EmbedderUnavailable):
            await client.embed(["a"])
        with pytest.raises(ProbeFailed):
            await client.probe()
        assert server.connections == 4  # each call sent twice, no more


def test_large_calls_are_cut_into_bounded_parts() -> None:
    from gateway.memory.embedder_client import PART_CHARS, PART_TEXTS, parts

    texts = [str(i) * 4000 for i in range(10)] * 26  # 260 texts of 4,000 characters
    cut = parts(texts)
    assert [t for part in cut for t in part] == texts  # in order, nothing lost
    assert all(len(p) <= PART_TEXTS and sum(map(len, p)) <= PART_CHARS for p in cut)
    assert parts(["x" * 100_000]) == [["x" * 100_000]]  # one text of any size still goes


async def test_many_texts_go_shortest_first_two_parts_at_a_time_and_come_back_in_order() -> None:
    sent: list[list[str]] = []
    in_flight = peak = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        texts = json.loads(request.content)["input"]
        sent.append(texts)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)  # the embedder at work: the next part arrives meanwhile
        in_flight -= 1
        data = [
            {
                "index": i,
                "embedding": base64.b64encode(
                    array.array("f", [len(t), 0, 0, 0]).tobytes()
                ).decode(),
            }
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"data": data})

    texts = [f"{'w ' * ((i * 37) % 50)}#{i}" for i in range(3 * PART_TEXTS + 5)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        client = EmbedderClient(
            http, "http://embedder/v1", DIM, GatewayMetrics(prometheus_client.CollectorRegistry())
        )
        vectors = await client.embed(texts)
    assert [v[0] for v in vectors] == [float(len(t)) for t in texts]  # the callers' order
    lengths = [len(t) for part in sent for t in part]
    assert lengths == sorted(lengths)  # each part holds texts of about one length
    assert len(sent) == 4 and peak == IN_FLIGHT == 2


def answering(status: int, body: Json) -> EmbedderClient:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    return EmbedderClient(httpx.AsyncClient(transport=transport), "http://e:8081/v1", DIM, metrics)


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "refused the gateway's key .401.: check GATEWAY_EMBEDDER_API_KEY"),
        (403, "refused the gateway's key .403.: check GATEWAY_EMBEDDER_API_KEY"),
        (404, "no POST http://e:8081/v1/embeddings .404.: check GATEWAY_EMBEDDER_URL"),
        (405, "check GATEWAY_EMBEDDER_URL"),
        (409, "embedder answered 409"),
    ],
)
async def test_an_answer_about_the_setup_is_an_outage_not_a_rejected_text(
    status: int, says: str
) -> None:
    # A wrong key or URL is not the texts' fault: a rejection would set every queued
    # memory aside for good, where an outage keeps them until the setup is mended.
    client = answering(status, {"detail": "Not Found", "error": {"message": "no such route"}})
    with pytest.raises(EmbedderUnavailable, match=says):
        await client.embed(["a"])


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_verdict_on_the_texts_is_a_rejection_in_the_embedders_words(status: int) -> None:
    client = answering(status, {"error": {"message": "input 0 is empty"}})
    with pytest.raises(EmbedderRejected, match="input 0 is empty"):
        await client.embed([""])


def health_then(status: int, seen: list[str] | None = None) -> EmbedderClient:
    """/health is fine; the embeddings route answers ``status``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request.url.path)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "dimension": DIM})
        assert json.loads(request.content) == {"input": []}  # nothing to encode
        return httpx.Response(status, json={"error": {"message": "input must not be empty"}})

    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    return EmbedderClient(http, "http://e:8081/v1", DIM, metrics)


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "check GATEWAY_EMBEDDER_API_KEY"),
        (403, "check GATEWAY_EMBEDDER_API_KEY"),
        (404, "no POST http://e:8081/v1/embeddings .404.: check GATEWAY_EMBEDDER_URL"),
        (405, "check GATEWAY_EMBEDDER_URL"),
    ],
)
async def test_the_probe_fails_when_health_answers_but_embeddings_are_not_served(
    status: int, says: str
) -> None:
    # /health lives at the service's root: a URL without /v1 or a key a proxy
    # refuses passes it, and readiness said "healthy" while every embed failed.
    with pytest.raises(ProbeFailed, match=says):
        await health_then(status).probe()


@pytest.mark.parametrize("status", [200, 400, 422])
async def test_any_verdict_on_the_empty_probe_input_means_the_route_is_served(
    status: int,
) -> None:
    seen: list[str] = []
    client = health_then(status, seen)
    await client.probe()
    await client.probe()  # checked once: the empty input is no steady 400 in its metrics
    assert seen == ["/health", "/v1/embeddings", "/health"]


async def test_an_embedder_that_answers_health_but_fails_every_embedding_stays_down() -> None:
    # /health said ok while every embedding failed: the monitor's probe put the
    # embedder back to healthy at once, and /readyz said "ready" with every write queued.
    failing = {"on": True}

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(200, json={"status": "ok", "dimension": DIM})
        if failing["on"]:
            return httpx.Response(500, json={"error": {"message": "boom"}})
        body = json.loads(request.content)
        data = [{"index": i, "embedding": ZEROS} for i in range(len(body["input"]))]
        return httpx.Response(200, json={"data": data})

    metrics = GatewayMetrics(prometheus_client.CollectorRegistry())
    http = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
    client = EmbedderClient(http, "http://e:8081/v1", DIM, metrics)
    await client.probe()  # nothing failed yet: /health is enough
    with pytest.raises(EmbedderUnavailable):
        await client.embed(["a"])
    with pytest.raises(ProbeFailed, match="embedding failed"):
        await client.probe()
    failing["on"] = False
    await client.probe()  # embeds again: healthy
    assert len(await client.embed(["a"])) == 1
