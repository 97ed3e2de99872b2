from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.exceptions import UnknownModel
from gateway.metrics import GatewayMetrics
from gateway.upstream.config import load_upstreams_file
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.registry import Registration
from gateway.upstream.replicas import Replicas
from gateway.upstream.router import FALLBACK, PRIMARY, AliasRoute, ModelRouter, registered_group


@pytest.fixture
async def router() -> AsyncIterator[ModelRouter]:
    replicas = Replicas(GatewayMetrics(CollectorRegistry()), health_interval_s=5)
    async with UpstreamHTTP() as http:
        router = ModelRouter(replicas, http, fallback_model="cloud-model")
        router.add_upstream(PRIMARY, ["http://vllm:8000/v1"], None)
        router.add_upstream(FALLBACK, ["https://cloud/v1"], "k")
        router.add_upstream("qwen", ["http://a/v1", "http://b/v1"], None)
        yield router


def serves(router: ModelRouter, group: str, *models: str) -> None:
    for replica in router.replicas.group(group):
        replica.models = [{"id": m, "object": "model"} for m in models]
        replica.model_ids = frozenset(models)
        replica.discovered = True


def names(targets: list) -> list[tuple[str, str | None]]:  # type: ignore[type-arg]
    return [(t.upstream.name, t.model) for t in targets]


async def test_alias_first_with_its_upstream_model_and_fallback(router: ModelRouter) -> None:
    serves(router, PRIMARY, "Qwen/Qwen2.5-7B")
    serves(router, "qwen", "Qwen/Qwen2.5-7B")
    router.add_alias(AliasRoute("fast", "qwen", "Qwen/Qwen2.5-7B", FALLBACK, "gpt-mini"))
    targets = names(router.resolve("fast"))
    assert sorted(targets[:2]) == [("qwen-0", "Qwen/Qwen2.5-7B"), ("qwen-1", "Qwen/Qwen2.5-7B")]
    assert targets[2:] == [("fallback", "gpt-mini")]


async def test_replicas_take_turns(router: ModelRouter) -> None:
    serves(router, PRIMARY)
    serves(router, FALLBACK)
    serves(router, "qwen", "m")
    firsts = {router.resolve("m")[0].upstream.name for _ in range(4)}
    assert firsts == {"qwen-0", "qwen-1"}


async def test_discovered_names_route_and_primary_falls_back(router: ModelRouter) -> None:
    serves(router, PRIMARY, "llama")
    serves(router, FALLBACK, "gpt-4o")
    serves(router, "qwen", "qwen")
    assert names(router.resolve("llama")) == [("primary", None), ("fallback", "cloud-model")]
    assert names(router.resolve("gpt-4o")) == [("fallback", None)]


async def test_unknown_model_lists_what_exists(router: ModelRouter) -> None:
    serves(router, PRIMARY, "llama")
    serves(router, FALLBACK)
    serves(router, "qwen", "qwen")
    router.add_alias(AliasRoute("fast", "qwen", "qwen"))
    with pytest.raises(UnknownModel) as caught:
        router.resolve("gpt-5")
    assert caught.value.available == ["fast", "llama", "qwen"]


async def test_undiscovered_upstreams_may_serve_anything(router: ModelRouter) -> None:
    serves(router, "qwen", "qwen")  # primary has not listed its models yet (loading)
    assert names(router.resolve("whatever")) == [("primary", None), ("fallback", "cloud-model")]


async def test_listing_has_aliases_and_discovered_models_with_state(router: ModelRouter) -> None:
    serves(router, PRIMARY, "llama")
    serves(router, FALLBACK)
    serves(router, "qwen", "qwen")
    router.add_alias(AliasRoute("fast", "qwen", "qwen"))
    items = {item["id"]: item for item in router.listing()}
    assert set(items) == {"fast", "llama", "qwen"}
    assert items["fast"]["upstream"] == "qwen" and items["fast"]["upstream_model"] == "qwen"
    assert items["llama"]["source"] == "discovered" and items["llama"]["object"] == "model"
    assert {item["state"] for item in items.values()} <= {"healthy", "starting", "unavailable"}


async def test_a_listed_model_has_openais_required_fields_even_if_its_upstream_left_some_out(
    router: ModelRouter,
) -> None:
    serves(router, "qwen", "qwen")  # an item of only id and object, as llama.cpp's lacks created
    router.replicas.group("qwen")[0].models[0]["owned_by"] = "someone"
    [item] = [item for item in router.listing() if item["id"] == "qwen"]
    assert item["created"] == 0 and item["object"] == "model"
    assert item["owned_by"] == "someone"  # the upstream's own fields win


def test_config_file_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "upstreams.yaml"
    path.write_text(
        "upstreams:\n"
        "  - name: qwen\n"
        "    urls: [http://a/v1]\n"
        "    models: [{alias: fast, model: Qwen/Qwen2.5-7B, fallback: primary}]\n"
    )
    loaded = load_upstreams_file(path)
    assert loaded.upstreams[0].models[0].model == "Qwen/Qwen2.5-7B"
    for bad in (
        "upstreams: [{name: primary, urls: [http://a]}]",
        "upstreams: [{name: a, urls: []}]",
        "upstreams: [{name: a, urls: [x], models: [{alias: m, fallback: nowhere}]}]",
        "upstreams: [{name: a, urls: [x], models: [{alias: m}]}, "
        "{name: b, urls: [y], models: [{alias: m}]}]",
        "upstreams: [{name: 'bad name', urls: [x]}]",
        "upstreams: [{name: a, urls: [x], surprise: 1}]",
        "upstreams: [",
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match="GATEWAY_CONFIG"):
            load_upstreams_file(path)


def test_an_upstream_key_is_sent_without_its_line_break_or_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key from a secret file or a YAML block ends in a line break; sent so, it
    # failed every request and the upstream stayed unhealthy for good.
    path = tmp_path / "upstreams.yaml"
    path.write_text('upstreams: [{name: a, urls: [http://a/v1], api_key: "sk-abc\\n"}]')
    assert load_upstreams_file(path).upstreams[0].key() == "sk-abc"
    monkeypatch.setenv("QWEN_KEY", "sk-from-a-file\n")
    path.write_text("upstreams: [{name: a, urls: [http://a/v1], api_key_env: QWEN_KEY}]")
    assert load_upstreams_file(path).upstreams[0].key() == "sk-from-a-file"
    monkeypatch.setenv("QWEN_KEY", "sk-abc\ndef")
    with pytest.raises(ValueError, match=r"QWEN_KEY: the key has characters") as refused:
        load_upstreams_file(path)
    assert "sk-abc" not in str(refused.value)
    path.write_text('upstreams: [{name: a, urls: [http://a/v1], api_key: "sk\\u00e9"}]')
    with pytest.raises(ValueError, match="GATEWAY_CONFIG"):
        load_upstreams_file(path)


async def test_metric_labels_stay_bounded(router: ModelRouter) -> None:
    serves(router, PRIMARY, "llama")
    router.add_alias(AliasRoute("fast", "qwen", "qwen"))
    assert router.metric_label("fast") == "fast"
    assert router.metric_label("llama") == "llama"
    assert router.metric_label("anything-a-client-sends") == "other"


async def test_registration_gets_its_own_upstream_and_never_touches_configured_aliases(
    router: ModelRouter,
) -> None:
    router.add_alias(AliasRoute("fast", "qwen", "qwen"))
    router.register(Registration("vl", "http://x:8000/v1", "Qwen/VL", "k"))
    assert router.registered() == ["vl"] and router.configured("fast")
    assert not router.configured("vl") and not router.configured("nothing")
    (replica,) = router.replicas.group(registered_group("vl"))
    assert names(router.resolve("vl")) == [(replica.name, "Qwen/VL")]
    await router.unregister("fast")  # configured: only GATEWAY_CONFIG changes it
    await router.unregister("vl")
    assert set(router.aliases) == {"fast"} and registered_group("vl") not in router.replicas
