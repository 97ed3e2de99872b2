"""The dashboard against real traffic: every expression, evaluated by a real Prometheus.

Real processes: the embedder (real weights), the stand-in LLM, the gateway, and
Debian's Prometheus with the repo's scrape config. The official ``openai`` SDK
sends plain and streamed chats for a user (the second turn recalls the first),
a bad request, a chat whose first upstream attempt fails with 503 (the gateway
retries), and memory API writes and searches. Then every dashboard expression
must be valid, and each one over ``memgate_*`` or ``embedder_*`` metrics must
return series. Families that only move on rare events (fallbacks, embedder
client errors, replay failures) exist at zero from the start.

``pytest -s`` prints the table of expressions and their series counts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import BadRequestError, OpenAI

from harness.fake_llm import RunningServer
from harness.process import Service, wait_until
from tests.conftest import GatewayFactory
from tests.monitoring.prometheus_harness import (
    PrometheusServer,
    QueryOutcome,
    evaluate_dashboard,
    require_prometheus,
    run_prometheus,
)

pytestmark = pytest.mark.e2e

OURS = ("memgate_", "embedder_")
FACT = "Dashboards aside, Maren keeps bees on a rooftop in Bergen."
QUESTION = "Where does Maren keep her bees?"


@dataclass
class Traffic:
    user: str
    memory_id: str
    chat_requests_upstream: int


def address(service: Service) -> str:
    return service.base_url.removeprefix("http://")


def memories(gateway: Service, user: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{gateway.url}/memories", params={"user_id": user})
    response.raise_for_status()
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def generate_traffic(gateway: Service, llm: RunningServer) -> Traffic:
    client = OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
    user = f"dash-{uuid.uuid4().hex[:8]}"
    fact: Any = [{"role": "user", "content": FACT}]
    question: Any = [{"role": "user", "content": QUESTION}]
    before = llm.stats()["chat_requests"]

    # A plain chat: nothing to recall yet; the turn is remembered in the background.
    first = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=fact, user=user
    )
    assert first.headers["x-memory-hits"] == "0"
    wait_until(lambda: len(memories(gateway, user)) >= 2, 15, what="the chat turn stored")

    # A streamed chat (usage asked for) recalls it: a memory hit, and a time to first token.
    with client.chat.completions.with_streaming_response.create(
        model="fake-model",
        messages=question,
        user=user,
        stream=True,
        stream_options={"include_usage": True},
    ) as streamed:
        assert int(streamed.headers["x-memory-hits"]) >= 1
        text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    assert text == f"echo: {QUESTION}"

    # A plain chat whose first upstream attempt fails: the gateway retries, the client sees 200.
    llm.set_behavior(mode="fail", status=503, times=1)
    retried = client.chat.completions.with_raw_response.create(
        model="fake-model", messages=question, user=user
    )
    assert retried.parse().choices[0].message.content == f"echo: {QUESTION}"
    assert int(retried.headers["x-memory-hits"]) >= 1

    # A chat without a user: no memory, forwarded as is.
    client.chat.completions.create(model="fake-model", messages=question)

    # A 4xx.
    invalid: Any = [{"role": "nobody", "content": "hi"}]
    with pytest.raises(BadRequestError):
        client.chat.completions.create(model="fake-model", messages=invalid)

    # The memory API: a write, a search, a read by id.
    added = httpx.post(
        f"{gateway.url}/memories",
        json={"user_id": user, "text": "Maren's hives are painted yellow.", "metadata": {"k": 1}},
    )
    assert added.status_code == 201, added.text
    memory_id = added.json()["results"][0]["id"]
    found = httpx.post(
        f"{gateway.url}/memories/search", json={"user_id": user, "query": "bee hives", "top_k": 3}
    )
    assert found.status_code == 200 and found.json()["results"], found.text
    assert httpx.get(f"{gateway.url}/memories/{memory_id}").status_code == 200
    upstream_requests = llm.stats()["chat_requests"] - before
    return Traffic(user, memory_id, upstream_requests)


def scalar(prom: PrometheusServer, expr: str) -> float:
    series = prom.series(expr)
    assert len(series) == 1, f"{expr}: {series}"
    return float(series[0]["value"][1])


def table(outcomes: Sequence[QueryOutcome]) -> str:
    rows = [f"{'series':>6}  {'panel / ref':<52}  expression"]
    for outcome in outcomes:
        count = "ERROR" if outcome.error else str(outcome.series)
        where = f"{outcome.query.panel} / {outcome.query.ref_id}"
        rows.append(f"{count:>6}  {where:<52}  {outcome.rendered}")
    return "\n".join(rows)


def test_every_dashboard_expression_has_series_under_real_traffic(
    embedder: Service, llm: RunningServer, gateway_factory: GatewayFactory
) -> None:
    require_prometheus()
    gateway = gateway_factory(llm.url, embedder.url)
    targets = {"gateway": [address(gateway)], "embedder": [address(embedder)]}
    with run_prometheus(targets) as prom:
        prom.wait_until_targets_up()
        traffic = generate_traffic(gateway, llm)
        # Chat turns are written through the outbox: wait until it has been replayed.
        wait_until(
            lambda: "memgate_outbox_depth 0.0" in httpx.get(f"{gateway.base_url}/metrics").text,
            10,
            what="an empty outbox",
        )
        prom.wait_for_scrapes(2)  # rate() needs two samples that include the traffic
        outcomes = evaluate_dashboard(prom)
        print("\n" + table(outcomes))

        invalid = [o for o in outcomes if o.error]
        assert not invalid, "invalid expressions:\n" + table(invalid)
        empty = [o for o in outcomes if o.needs_series(OURS) and not o.series]
        assert not empty, "expressions over our metrics without series:\n" + table(empty)

        # The traffic itself is what the series show, not only the zeros set at start.
        counted = {
            "retries": scalar(prom, "sum(memgate_upstream_retries_total)"),
            "upstream 503s": scalar(
                prom, 'sum(memgate_upstream_requests_total{outcome="http_error"})'
            ),
            "recall hits": scalar(prom, 'sum(memgate_memory_recalls_total{outcome="hit"})'),
            "4xx": scalar(prom, 'sum(memgate_http_requests_total{status=~"4.."})'),
            "streams": scalar(prom, "sum(memgate_upstream_time_to_first_token_seconds_count)"),
            "completion tokens": scalar(
                prom, 'sum(memgate_upstream_tokens_total{kind="completion"})'
            ),
            "outbox replays": scalar(prom, 'sum(memgate_outbox_replays_total{outcome="success"})'),
            "api writes": scalar(
                prom, 'sum(memgate_memory_writes_total{source="api",outcome="stored"})'
            ),
            "embedder requests": scalar(prom, 'sum(embedder_requests_total{status="200"})'),
            "memory by id": scalar(
                prom, 'sum(memgate_http_requests_total{route="/v1/memories/{memory_id}"})'
            ),
        }
        print(json.dumps(counted))
        assert all(value >= 1 for value in counted.values()), counted
        assert counted["recall hits"] >= 2 and counted["streams"] >= 1
        # 4 chats reached the upstream, one of them twice (the retry).
        assert traffic.chat_requests_upstream == 5

    # Label values stay bounded: no user, memory id or message in the exposition.
    exposition = httpx.get(f"{gateway.base_url}/metrics").text
    for private in (traffic.user, traffic.memory_id, "Maren", "Bergen"):
        assert private not in exposition, private
