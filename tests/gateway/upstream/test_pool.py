"""The pool's retry policy: only where no generation can still be running upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.upstream.http import (
    ConnectFailed,
    ConnectTimedOut,
    Disconnected,
    Reply,
    TimedOut,
    Timeouts,
    TransportError,
    UpstreamHTTP,
    timeouts_for,
)
from gateway.upstream.pool import Target, UpstreamFailed, UpstreamPool
from gateway.upstream.replica import Call, Upstream


class Failing(Upstream):
    """A replica whose every send fails the same way, counting the sends."""

    failure: BaseException | None = None
    sends = 0

    async def send(
        self, call: Call, body: bytes | None, *, request_id: str | None, timeouts: Timeouts
    ) -> Reply:
        self.sends += 1
        if self.failure is None:  # silence: the request was sent, no headers come
            await asyncio.sleep(3600)
        raise self.failure  # type: ignore[misc]


@pytest.fixture
async def pool_and_upstream() -> AsyncIterator[tuple[UpstreamPool, Failing]]:
    pool = UpstreamPool(GatewayMetrics(CollectorRegistry()), attempts=3)
    async with UpstreamHTTP() as http:
        upstream = Failing("primary", "http://vllm:8000/v1", http)  # no monitor: healthy
        yield pool, upstream


@pytest.mark.parametrize(
    ("failure", "sends", "status"),
    [
        (ConnectFailed("refused"), 3, 503),  # never sent: retried
        (ConnectTimedOut("connect timeout"), 3, 504),  # never sent: retried
        (TimedOut("read timeout"), 1, 504),  # sent, then silence: not retried
        (Disconnected("closed"), 3, 502),  # closed unanswered: the work died with it
        (TransportError("malformed answer"), 1, 502),  # it answered, badly: not retried
        (None, 1, 504),  # sent, no headers within the deadline: not retried
    ],
)
async def test_only_requests_never_sent_are_retried(
    pool_and_upstream: tuple[UpstreamPool, Failing],
    failure: BaseException | None,
    sends: int,
    status: int,
) -> None:
    pool, upstream = pool_and_upstream
    upstream.failure = failure
    with pytest.raises(UpstreamFailed) as raised:
        await pool.open_chat(
            [Target(upstream)], lambda _: b"{}", timeouts=timeouts_for(1, 1),
            headers_timeout_s=0.2, request_id=None,
        )  # fmt: skip
    assert (upstream.sends, raised.value.status) == (sends, status)
