from __future__ import annotations

from gateway.enums import BreakerState
from gateway.upstream.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=5, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN and not breaker.allow()


def test_half_open_lets_one_trial_through() -> None:
    clock = Clock()
    changes: list[str] = []
    breaker = CircuitBreaker(1, reset_timeout_s=5, clock=clock, on_change=changes.append)
    breaker.record_failure()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.state == BreakerState.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False  # one trial at a time
    breaker.record_success()
    assert breaker.state == BreakerState.CLOSED and breaker.allow()
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_trial_opens_again_for_a_full_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == BreakerState.OPEN
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()


def test_reset_closes_at_once() -> None:
    breaker = CircuitBreaker(1, reset_timeout_s=60, clock=Clock())
    breaker.record_failure()
    breaker.reset()
    assert breaker.state == BreakerState.CLOSED and breaker.would_allow()


def test_a_trial_without_a_verdict_frees_the_half_open_breaker_for_the_next() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.allow()
    breaker.record_neutral()  # a 4xx answer, a 429, a client that left
    assert breaker.state == BreakerState.HALF_OPEN
    assert breaker.would_allow() and breaker.allow()  # the next request is the trial


def test_a_trial_that_never_reports_stops_blocking_after_the_reset_timeout() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, reset_timeout_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.allow()
    clock.now = 9.9
    assert not breaker.allow()
    clock.now = 10.0  # the trial is lost (cancelled, never recorded): another may go
    assert breaker.allow()
    assert not breaker.allow()
