"""The 503's code: an LLM starting, one nobody answers for, one that fails.

The upstreams are probed for real: a port nobody listens on refuses, and a
small real server answers (see tests/support/dropping_server.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.enums import Health
from gateway.monitor import Monitor
from gateway.upstream.availability import why_unavailable
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.replica import Upstream
from harness.process import free_port
from tests.support.dropping_server import Json, dropping_server


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    async with UpstreamHTTP() as client:
        yield client


def watched(upstream: Upstream) -> Upstream:
    upstream.monitor = Monitor(f"llm:{upstream.name}", upstream.probe)
    return upstream


def monitor(upstream: Upstream) -> Monitor:
    assert upstream.monitor is not None
    return upstream.monitor


def llm(path: str, _: Json) -> Json:
    return {"object": "list", "data": [{"id": "m", "object": "model"}]} if "models" in path else {}


async def test_refused_connections_count_as_starting_within_the_grace_period(
    http: UpstreamHTTP,
) -> None:
    upstream = watched(Upstream("primary", f"http://127.0.0.1:{free_port()}/v1", http))
    assert not await monitor(upstream).check_now()
    verdict = why_unavailable([upstream])
    assert verdict.code == "llm_starting"
    assert "nothing listens at upstream 'primary' yet" in verdict.message


async def test_refused_past_the_grace_period_is_unreachable(http: UpstreamHTTP) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    upstream = watched(Upstream("primary", url, http, start_grace_s=0.0))
    assert not await monitor(upstream).check_now()
    assert monitor(upstream).state.status == Health.UNHEALTHY
    assert upstream.refused_since is not None
    verdict = why_unavailable([upstream], now=upstream.refused_since + 42)
    assert verdict.code == "llm_unreachable"
    assert "connections refused ('primary' for 42 s)" in verdict.message
    assert "GATEWAY_LLM_URL" in verdict.message


async def test_a_server_that_was_up_and_went_away_is_unreachable_at_once(
    http: UpstreamHTTP,
) -> None:
    async with dropping_server(llm) as server:
        upstream = watched(Upstream("primary", f"{server.url}/v1", http))
        assert await monitor(upstream).check_now()
    # The same address, nobody listening any more (the grace period is for first starts).
    assert not await monitor(upstream).check_now()
    assert monitor(upstream).state.status == Health.UNHEALTHY
    assert why_unavailable([upstream]).code == "llm_unreachable"


async def test_a_server_that_answers_is_never_unreachable(http: UpstreamHTTP) -> None:
    async with dropping_server(llm) as server:
        upstream = watched(Upstream("primary", f"{server.url}/v1", http))
        assert await monitor(upstream).check_now()
        assert not upstream.refusing
        monitor(upstream).report_failure("answered 500")
        assert why_unavailable([upstream]).code == "llm_unavailable"
        assert monitor(upstream).state.status != Health.HEALTHY


async def test_one_answering_upstream_among_refusing_ones_is_not_unreachable(
    http: UpstreamHTTP,
) -> None:
    async with dropping_server(llm) as server:
        up = watched(Upstream("a", f"{server.url}/v1", http))
        down = watched(Upstream("b", f"http://127.0.0.1:{free_port()}/v1", http, start_grace_s=0))
        await monitor(up).check_now()
        await monitor(down).check_now()
        monitor(up).report_failure("breaker open")
        assert why_unavailable([up, down]).code == "llm_unavailable"
