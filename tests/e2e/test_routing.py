"""Several models on several upstreams: routing by alias and by discovered name,
name substitution both ways, runtime registration surviving a restart and shared
by the gateways that share a registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import NotFoundError, OpenAI

from harness.fake_llm import RunningServer, start_llm_server
from harness.process import Service, free_port, wait_until
from tests.support.stack import start_gateway

pytestmark = pytest.mark.e2e

HELLO: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, RunningServer]]:
    started = {
        "a": start_llm_server(model="model-a"),
        "b1": start_llm_server(model="model-b"),
        "b2": start_llm_server(model="model-b"),
    }
    yield started
    for server in started.values():
        server.terminate()


@pytest.fixture
def gateway(
    tmp_path: Path, servers: dict[str, RunningServer], embedder: Service
) -> Iterator[Service]:
    for server in servers.values():
        server.reset()
    config = tmp_path / "upstreams.yaml"
    config.write_text(
        "upstreams:\n"
        "  - name: team-a\n"
        f"    urls: [{servers['a'].url}]\n"
        "    models:\n"
        "      - {alias: small, model: model-a}\n"
        "  - name: team-b\n"
        f"    urls: [{servers['b1'].url}, {servers['b2'].url}]\n"
    )
    service = start_gateway(
        tmp_path / "data", servers["a"].url, embedder.url, GATEWAY_CONFIG=str(config)
    )
    yield service
    service.terminate()


def client(gateway: Service) -> OpenAI:
    return OpenAI(base_url=gateway.url, api_key="x", max_retries=0)


def test_alias_routes_and_names_are_substituted_both_ways(
    gateway: Service, servers: dict[str, RunningServer]
) -> None:
    reply = client(gateway).chat.completions.create(model="small", messages=HELLO)
    assert reply.model == "small"  # the client's name, restored
    assert servers["a"].requests()[-1]["body"]["model"] == "model-a"  # the upstream's name
    stream = client(gateway).chat.completions.create(model="small", messages=HELLO, stream=True)
    chunks = list(stream)
    assert chunks and {c.model for c in chunks} == {"small"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
    assert all(not c.usage for c in chunks)  # the usage the gateway asked for is not relayed
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert (
        'memgate_model_requests_total{model="small",outcome="success",upstream="team-a"} 2.0'
        in (metrics)
    )


def test_a_responses_chain_through_an_alias_sends_the_upstreams_name_each_turn(
    gateway: Service, servers: dict[str, RunningServer]
) -> None:
    # The chained turn goes to the replica holding the chain; it went there under
    # the alias's own name, which vLLM does not serve (a 404 on every chained turn).
    api = client(gateway)
    first = api.responses.create(model="small", input="remember this")
    follow = api.responses.create(model="small", input="go on", previous_response_id=first.id)
    streamed = api.responses.create(
        model="small", input="and on", previous_response_id=follow.id, stream=True
    )
    assert [event.type for event in streamed][-1] == "response.completed"
    sent = [r["body"]["model"] for r in servers["a"].requests() if r["path"] == "/v1/responses"]
    assert sent == ["model-a", "model-a", "model-a"]
    assert follow.model == "small"  # and the client has its own name back
    fetched = api.responses.retrieve(follow.id)  # from the replica that holds it
    assert (fetched.id, fetched.model) == (follow.id, "small")
    assert servers["a"].requests()[-1]["path"] == f"/v1/responses/{follow.id}"


def test_discovered_names_route_across_replicas(
    gateway: Service, servers: dict[str, RunningServer]
) -> None:
    for _ in range(6):
        reply = client(gateway).chat.completions.create(model="model-b", messages=HELLO)
        assert reply.model == "model-b"
    assert len(servers["b1"].requests()) > 0 and len(servers["b2"].requests()) > 0
    assert len(servers["b1"].requests()) + len(servers["b2"].requests()) == 6
    assert servers["a"].requests() == []


def test_unknown_model_is_404_listing_what_exists(gateway: Service) -> None:
    with pytest.raises(NotFoundError) as caught:
        client(gateway).chat.completions.create(model="gpt-7", messages=HELLO)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"
    assert "model-a" in error["message"] and "model-b" in error["message"]
    assert "small" in error["message"]


def test_models_lists_aliases_and_discovered_models(gateway: Service) -> None:
    listed = {m.id: m.model_dump() for m in client(gateway).models.list().data}
    assert set(listed) == {"small", "model-a", "model-b"}
    assert listed["small"]["upstream"] == "team-a" and listed["small"]["state"] == "healthy"
    assert listed["model-b"]["upstream"] == "team-b"


def test_a_model_is_retrieved_by_name_aliases_included(gateway: Service) -> None:
    # The SDK's models.retrieve: answered by the gateway, which alone knows the
    # aliases and every upstream's models (it was passed through: a 404 upstream).
    api = client(gateway)
    small = api.models.retrieve("small").model_dump()
    assert small["id"] == "small" and small["upstream"] == "team-a"
    assert small["upstream_model"] == "model-a"
    discovered = api.models.retrieve("model-b")
    assert discovered.id == "model-b" and discovered.object == "model"
    assert isinstance(discovered.created, int) and discovered.owned_by
    with pytest.raises(NotFoundError) as caught:
        api.models.retrieve("gpt-7")
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_found"


def test_a_stream_asks_the_upstream_for_usage_the_client_did_not_ask_for(
    gateway: Service, servers: dict[str, RunningServer]
) -> None:
    chunks = list(
        client(gateway).chat.completions.create(model="model-a", messages=HELLO, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
    assert all(not c.usage for c in chunks)
    sent = servers["a"].requests()[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["model"], sent["messages"], sent["stream"]) == ("model-a", HELLO, True)


def test_usage_is_relayed_when_the_client_asks(
    gateway: Service, servers: dict[str, RunningServer]
) -> None:
    stream = client(gateway).chat.completions.create(
        model="model-a", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    assert [c.usage for c in stream if c.usage]  # the client asked: it gets it
    sent = servers["a"].requests()[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert 'memgate_upstream_tokens_total{kind="completion",upstream="primary"}' in metrics


def test_registration_routes_survives_restart_and_deletes(
    tmp_path: Path, servers: dict[str, RunningServer], embedder: Service
) -> None:
    data_dir = tmp_path / "data"
    gateway = start_gateway(data_dir, servers["a"].url, embedder.url)
    admin = f"{gateway.base_url}/admin/models"
    body = {"alias": "qwen-vl-2b", "upstream_url": servers["b1"].url, "model": "model-b",
            "api_key": "worker-key"}  # fmt: skip
    created = httpx.post(admin, json=body)
    assert created.status_code == 201 and created.json()["state"] == "healthy"
    reply = client(gateway).chat.completions.create(model="qwen-vl-2b", messages=HELLO)
    assert reply.model == "qwen-vl-2b"
    sent = servers["b1"].requests()[-1]
    assert sent["body"]["model"] == "model-b"
    assert sent["headers"]["authorization"] == "Bearer worker-key"

    dead_port = free_port()
    loading = {
        "alias": "loading",
        "model": "big",
        "upstream_url": f"http://127.0.0.1:{dead_port}/v1",
    }
    starting = httpx.post(admin, json=loading)
    assert starting.status_code == 201 and starting.json()["state"] == "starting"
    ask_loading = {"model": "loading", "messages": HELLO}
    refused = httpx.post(f"{gateway.url}/chat/completions", json=ask_loading)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "llm_starting"
    gateway.terminate()

    again = start_gateway(data_dir, servers["a"].url, embedder.url)
    try:
        listing = httpx.get(f"{again.base_url}/admin/models").json()["data"]
        assert {m["alias"] for m in listing} == {"qwen-vl-2b", "loading"}
        assert "worker-key" not in json.dumps(listing)  # keys are never echoed
        reply = client(again).chat.completions.create(model="qwen-vl-2b", messages=HELLO)
        assert reply.model == "qwen-vl-2b"
        with start_llm_server(port=dead_port, model="big"):  # the loading model comes up
            wait_until(lambda: _serving(again, "loading"), 10)
            reply = client(again).chat.completions.create(model="loading", messages=HELLO)
            assert reply.model == "loading"
        deleted = httpx.delete(f"{again.base_url}/admin/models/qwen-vl-2b")
        assert deleted.json() == {"alias": "qwen-vl-2b", "deleted": True}
        with pytest.raises(NotFoundError):
            client(again).chat.completions.create(model="qwen-vl-2b", messages=HELLO)
        assert httpx.delete(f"{again.base_url}/admin/models/qwen-vl-2b").status_code == 404
    finally:
        again.terminate()


def test_gateways_sharing_a_registry_learn_each_others_registrations(
    tmp_path: Path, servers: dict[str, RunningServer], embedder: Service
) -> None:
    for server in servers.values():
        server.reset()
    shared = {
        "GATEWAY_REGISTRY_PATH": str(tmp_path / "shared" / "models.sqlite3"),
        "GATEWAY_REGISTRY_SYNC_S": "0.2",
    }
    one = start_gateway(tmp_path / "one", servers["a"].url, embedder.url, **shared)
    two = start_gateway(tmp_path / "two", servers["a"].url, embedder.url, **shared)
    try:
        body = {"alias": "shared-vl", "upstream_url": servers["b2"].url, "model": "model-b",
                "api_key": "shared-key"}  # fmt: skip
        assert httpx.post(f"{one.base_url}/admin/models", json=body).status_code == 201
        wait_until(lambda: _serving(two, "shared-vl"), 10, what="gateway two routes shared-vl")
        reply = client(two).chat.completions.create(model="shared-vl", messages=HELLO)
        assert reply.model == "shared-vl"
        [sent] = servers["b2"].requests()
        assert sent["body"]["model"] == "model-b"
        assert sent["headers"]["authorization"] == "Bearer shared-key"

        deleted = httpx.delete(f"{two.base_url}/admin/models/shared-vl")
        assert deleted.json() == {"alias": "shared-vl", "deleted": True}
        wait_until(lambda: not _listed(one, "shared-vl"), 10, what="gateway one drops shared-vl")
        with pytest.raises(NotFoundError) as caught:
            client(one).chat.completions.create(model="shared-vl", messages=HELLO)
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "model_not_found"
        assert len(servers["b2"].requests()) == 1
    finally:
        one.terminate()
        two.terminate()


def _listed(gateway: Service, alias: str) -> bool:
    listing = httpx.get(f"{gateway.base_url}/admin/models").json()["data"]
    return any(m["alias"] == alias for m in listing)


def _serving(gateway: Service, alias: str) -> bool:
    models = httpx.get(f"{gateway.url}/models").json()["data"]
    return any(m["id"] == alias and m["state"] == "healthy" for m in models)
