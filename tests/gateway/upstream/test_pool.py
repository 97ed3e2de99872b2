"""The pool: its retry policy (only where no generation can still be running
upstream), failover along the targets, and how it drives the breakers.

Replicas here are in-process fakes at the Upstream interface (``send``): no
sockets. The real client against real sockets is tested in test_http.py and
test_replica.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from gateway.enums import BreakerState, Health, UpstreamOutcome
from gateway.exceptions import NoUpstreamAvailable, UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor
from gateway.upstream.availability import STARTING_CODE
from gateway.upstream.breaker import CircuitBreaker
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
from gateway.upstream.pool import OpenedReply, Target, UpstreamPool
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


async def test_a_client_that_leaves_before_the_answers_head_is_counted(
    pool_and_upstream: tuple[UpstreamPool, Failing],
) -> None:
    # A completion's head comes when it is generated: most clients that give up
    # on one leave here, and were in no upstream metric at all.
    pool, upstream = pool_and_upstream
    upstream.failure = None  # sent, then silence
    sent, send = asyncio.Event(), upstream.send

    async def sending(*args: Any, **kwargs: Any) -> Reply:
        sent.set()
        return await send(*args, **kwargs)

    upstream.send = sending  # type: ignore[method-assign]
    opening = pool.open_chat(
        [Target(upstream)], lambda _: b"{}", timeouts=timeouts_for(60, 1),
        headers_timeout_s=60, request_id=None,
    )  # fmt: skip
    call = asyncio.create_task(opening)
    await sent.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    counted = pool._metrics.upstream_requests.labels("primary", UpstreamOutcome.CLIENT_DISCONNECT)
    assert counted._value.get() == 1
    assert upstream.breaker.state == BreakerState.CLOSED


class FakeReply:
    """What Upstream.send returns: a status and headers; the body read on demand."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}
        self.read = False
        self.closed = False

    async def aread(self) -> bytes:
        self.read = True
        return b'{"error": {"message": "busy"}}'

    async def aclose(self) -> None:
        self.closed = True


Outcome = int | tuple[int, dict[str, str]] | BaseException


class Scripted(Upstream):
    """A replica that answers each send with the next scripted outcome (a status,
    a status with headers, or a transport error), noting the bodies it was sent."""

    def __init__(self, name: str, *outcomes: Outcome, group: str | None = None) -> None:
        super().__init__(name, f"http://{name}/v1", cast(UpstreamHTTP, None), group=group)
        self.outcomes = list(outcomes)
        self.bodies: list[bytes | None] = []
        self.replies: list[FakeReply] = []

    async def send(
        self, call: Call, body: bytes | None, *, request_id: str | None, timeouts: Timeouts
    ) -> Reply:
        self.bodies.append(body)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        status, headers = outcome if isinstance(outcome, tuple) else (outcome, {})
        self.replies.append(FakeReply(status, headers))
        return cast(Reply, self.replies[-1])


class Watching(Monitor):
    """A monitor never started, noting when it is asked to probe at once."""

    woken = False

    def wake(self) -> None:
        self.woken = True


async def no_probe() -> None:
    pass


def watched(upstream: Upstream) -> Upstream:
    """Give ``upstream`` a monitor that has seen it healthy."""
    upstream.monitor = Watching(f"llm:{upstream.name}", no_probe)
    upstream.monitor.report_success()
    return upstream


class Counted:
    """The pool with its metrics registry, to read what it counted."""

    def __init__(self, attempts: int = 3) -> None:
        self.registry = CollectorRegistry()
        self.pool = UpstreamPool(GatewayMetrics(self.registry), attempts=attempts)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"memgate_{name}", labels) or 0.0

    async def open(self, *targets: Target) -> OpenedReply:
        return await self.pool.open_chat(
            targets, lambda target: f"for {target.model}".encode(), timeouts=timeouts_for(1, 1),
            headers_timeout_s=5, request_id="r1",
        )  # fmt: skip


def targets(*replicas: Upstream) -> Sequence[Target]:
    return [Target(replica) for replica in replicas]


@pytest.mark.parametrize("status", [429, 502, 503])
async def test_a_refusal_is_retried_and_its_answer_read_and_closed(status: int) -> None:
    pool = Counted()
    primary = Scripted("primary", status, 200)
    opened = await pool.open(*targets(primary))
    assert opened.response.status_code == 200 and opened.upstream is primary
    assert len(primary.bodies) == 2
    refused = primary.replies[0]
    assert refused.read and refused.closed  # so its connection can be reused
    assert pool.value("upstream_retries_total", upstream="primary") == 1
    assert pool.value("upstream_requests_total", upstream="primary", outcome="http_error") == 1


async def test_a_504_is_answered_at_once() -> None:
    # A proxy in front timed out while the model may still be generating.
    pool = Counted()
    primary = Scripted("primary", 504, 200)
    with pytest.raises(UpstreamFailed) as raised:
        await pool.open(*targets(primary))
    assert raised.value.status == 504 and len(primary.bodies) == 1


async def test_retries_stop_after_the_attempts_with_the_last_failure() -> None:
    pool = Counted(attempts=3)
    primary = Scripted("primary", 503, 503, 502, 200)
    with pytest.raises(UpstreamFailed) as raised:
        await pool.open(*targets(primary))
    assert raised.value.status == 502 and len(primary.bodies) == 3


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("0", 0.0), ("1.5", 1.5), ("-3", 0.0), ("1e9", 3600.0), ("nan", None), ("soon", None)],
)
async def test_retry_after_is_read_finite_and_capped(header: str, seconds: float | None) -> None:
    pool = Counted(attempts=1)
    with pytest.raises(UpstreamFailed) as raised:
        await pool.open(*targets(Scripted("primary", (429, {"retry-after": header}))))
    assert raised.value.retry_after == seconds


async def test_a_replica_that_refuses_connections_fails_over_to_the_next() -> None:
    pool = Counted()
    primary = watched(Scripted("primary", ConnectFailed("refused")))
    fallback = watched(Scripted("fallback", 200))
    opened = await pool.open(Target(primary), Target(fallback, "cloud-model"))
    assert opened.upstream is fallback
    # The monitor learnt at once: the next attempt skipped the primary.
    assert primary.monitor is not None and not primary.monitor.healthy
    # Each target got the body meant for it (its own model name).
    assert (primary.bodies, fallback.bodies) == ([b"for None"], [b"for cloud-model"])
    assert pool.value("upstream_fallbacks_total", upstream="fallback") == 1
    assert pool.value("upstream_requests_total", upstream="primary", outcome="connect_error") == 1


async def test_another_replica_of_the_same_upstream_is_no_fallback() -> None:
    pool = Counted()
    first = watched(Scripted("qwen-0", Disconnected("closed"), group="qwen"))
    second = watched(Scripted("qwen-1", 200, group="qwen"))
    opened = await pool.open(*targets(first, second))
    assert opened.upstream is second
    assert pool.value("upstream_fallbacks_total", upstream="qwen-1") == 0


async def test_unhealthy_or_tripped_replicas_are_skipped_without_a_send() -> None:
    pool = Counted()
    sick = watched(Scripted("sick"))
    assert sick.monitor is not None
    sick.monitor.report_failure("down")
    tripped = Scripted("tripped")
    tripped.breaker = CircuitBreaker(failure_threshold=1)
    tripped.breaker.record_failure()
    well = Scripted("well", 200)
    opened = await pool.open(*targets(sick, tripped, well))
    assert opened.upstream is well and not sick.bodies and not tripped.bodies


async def test_none_eligible_fails_at_once_and_says_whether_one_is_starting() -> None:
    pool = Counted()
    loading = watched(Scripted("loading"))
    assert loading.monitor is not None
    loading.monitor.report_failure("503 while loading", starting=True)
    assert loading.monitor.state.status == Health.UNHEALTHY  # it had been up: not starting
    fresh = Scripted("fresh")
    fresh.monitor = Monitor("llm:fresh", no_probe)  # never up yet: starting
    with pytest.raises(NoUpstreamAvailable) as raised:
        await pool.open(*targets(loading, fresh))
    assert raised.value.code == STARTING_CODE and "fresh: starting" in str(raised.value)
    with pytest.raises(NoUpstreamAvailable) as raised:
        await pool.open(*targets(loading))
    assert raised.value.code != STARTING_CODE
    assert not loading.bodies and not fresh.bodies


async def test_server_failures_trip_the_breaker_and_429_does_not() -> None:
    pool = Counted(attempts=1)
    busy = Scripted("busy", *[429] * 3)
    busy.breaker = CircuitBreaker(failure_threshold=2)
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await pool.open(*targets(busy))
    assert busy.breaker.state == BreakerState.CLOSED  # load, not a broken upstream
    broken = Scripted("broken", 502, 503, 200)
    broken.breaker = CircuitBreaker(failure_threshold=2)
    for _ in range(2):
        with pytest.raises(UpstreamFailed):
            await pool.open(*targets(broken))
    assert broken.breaker.state == BreakerState.OPEN
    with pytest.raises(NoUpstreamAvailable):  # open: not even tried
        await pool.open(*targets(broken))
    assert len(broken.bodies) == 2
    assert pool.value("upstream_breaker_state", upstream="broken", state="open") == 1


async def test_a_half_open_breaker_lets_one_trial_through_and_its_outcome_decides() -> None:
    now = [0.0]
    pool = Counted(attempts=1)
    replica = Scripted("r", 200, 200)
    replica.breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=lambda: now[0])
    replica.breaker.record_failure()
    now[0] = 5.0  # the reset timeout passed: half open
    trial = await pool.open(*targets(replica))
    with pytest.raises(NoUpstreamAvailable):  # one trial at a time
        await pool.open(*targets(replica))
    pool.pool.record_outcome(trial.upstream, UpstreamOutcome.SUCCESS)
    assert replica.breaker.state == BreakerState.CLOSED
    await pool.open(*targets(replica))  # closed again: requests go
    assert len(replica.bodies) == 2


@pytest.mark.parametrize(
    ("outcome", "state", "woken"),
    [
        (UpstreamOutcome.STREAM_ERROR, BreakerState.OPEN, True),
        (UpstreamOutcome.TIMEOUT, BreakerState.OPEN, True),
        (UpstreamOutcome.HTTP_ERROR, BreakerState.CLOSED, False),  # its answer, relayed
        (UpstreamOutcome.CLIENT_DISCONNECT, BreakerState.CLOSED, False),
    ],
)
async def test_how_a_relay_ended_reaches_the_breaker_and_the_monitor(
    outcome: UpstreamOutcome, state: BreakerState, woken: bool
) -> None:
    pool = Counted()
    replica = watched(Scripted("r"))
    replica.breaker = CircuitBreaker(failure_threshold=1)
    pool.pool.record_outcome(replica, outcome)
    assert replica.breaker.state == state
    assert cast(Watching, replica.monitor).woken is woken  # probe now: died mid-stream?
    assert pool.value("upstream_requests_total", upstream="r", outcome=outcome) == 1


def half_open(replica: Scripted) -> Scripted:
    """``replica`` with a breaker that failed once and whose reset timeout has passed."""
    now = [0.0]
    replica.breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=5, clock=lambda: now[0])
    replica.breaker.record_failure()
    now[0] = 5.0
    return replica


@pytest.mark.parametrize("outcome", [UpstreamOutcome.HTTP_ERROR, UpstreamOutcome.CLIENT_DISCONNECT])
async def test_a_half_open_trial_without_a_verdict_lets_the_next_request_be_the_trial(
    outcome: UpstreamOutcome,
) -> None:
    pool, replica = Counted(attempts=1), half_open(Scripted("r", 200, 200))
    trial = await pool.open(*targets(replica))
    pool.pool.record_outcome(trial.upstream, outcome)  # e.g. the upstream's 400, relayed
    await pool.open(*targets(replica))  # not wedged: the next one is the trial
    assert len(replica.bodies) == 2


async def test_a_429_to_a_half_open_trial_lets_the_next_request_be_the_trial() -> None:
    pool, replica = Counted(attempts=1), half_open(Scripted("r", 429, 200))
    with pytest.raises(UpstreamFailed):
        await pool.open(*targets(replica))
    assert replica.breaker.state == BreakerState.HALF_OPEN
    await pool.open(*targets(replica))
    assert len(replica.bodies) == 2


async def test_a_replica_that_answers_500_where_another_serves_is_taken_out() -> None:
    # Its health check passes, so only the answers can tell: each 500 goes to the
    # other replica, which serves it, and the breaker of the one that failed opens.
    counted = Counted()
    broken = Scripted("a", *[500] * 20, group="llm")
    sound = Scripted("b", *[200] * 20, group="llm")
    for _ in range(5):  # the breaker's threshold
        opened = await counted.open(*targets(broken, sound))
        assert opened.upstream is sound and opened.response.status_code == 200
    assert broken.breaker.state == BreakerState.OPEN and sound.breaker.state == BreakerState.CLOSED
    assert all(reply.closed for reply in broken.replies)  # its connections were released
    sends = len(broken.bodies)
    assert (await counted.open(*targets(broken, sound))).upstream is sound
    assert len(broken.bodies) == sends  # out of rotation: not even tried
    assert counted.value("upstream_breaker_state", upstream="a", state="open") == 1


async def test_a_request_that_fails_on_every_replica_blames_none() -> None:
    # A request the server cannot take (llama.cpp answers some with 500): trying it
    # on each replica is all; one tenant's bad requests open nobody's breaker.
    counted = Counted()
    a = Scripted("a", *[500] * 20, group="llm")
    b = Scripted("b", *[500] * 20, group="llm")
    for _ in range(6):
        opened = await counted.open(*targets(a, b))
        assert opened.response.status_code == 500  # relayed as the upstream's answer
    assert a.breaker.state == b.breaker.state == BreakerState.CLOSED
    assert len(a.bodies) + len(b.bodies) == 12  # each request went to both, once


async def test_a_500_from_the_only_replica_is_the_answer_and_blames_nobody() -> None:
    counted = Counted()
    only = Scripted("a", *[500] * 10, group="llm")
    for _ in range(6):
        assert (await counted.open(*targets(only))).response.status_code == 500
    assert only.breaker.state == BreakerState.CLOSED and len(only.bodies) == 6
