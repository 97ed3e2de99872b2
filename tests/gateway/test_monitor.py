from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.enums import Health
from gateway.monitor import Monitor, ProbeFailed, next_backoff


class Dependency:
    """A probe target whose answer the test sets."""

    def __init__(self) -> None:
        self.failure: ProbeFailed | None = ProbeFailed("refused", starting=True)
        self.calls = 0

    async def probe(self) -> None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure


async def wait_for(condition: Callable[[], bool], within_s: float = 2.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - polling state another task owns
            await asyncio.sleep(0.005)


def test_backoff_is_capped_and_jittered() -> None:
    delays = []
    delay = 0.0
    for _ in range(20):
        delay = next_backoff(delay, base_s=0.05, cap_s=1.0)
        delays.append(delay)
    assert all(0.025 <= d <= 1.0 for d in delays)
    assert max(delays[-5:]) > 0.5  # it grew toward the cap
    assert len(set(delays)) > 1  # and is jittered


async def test_states_follow_the_probe() -> None:
    dep = Dependency()
    changes: list[tuple[str, str]] = []
    monitor = Monitor("dep", dep.probe, interval_s=10,
                      on_change=lambda a, b: changes.append((a, b)))  # fmt: skip
    assert await monitor.check_now() is False
    assert monitor.state.status == Health.STARTING and monitor.state.last_error == "refused"
    dep.failure = None
    assert await monitor.check_now() is True
    dep.failure = ProbeFailed("500")
    await monitor.check_now()
    assert monitor.state.status == Health.UNHEALTHY
    assert changes == [(Health.STARTING, Health.HEALTHY), (Health.HEALTHY, Health.UNHEALTHY)]


async def test_a_returning_dependency_is_seen_within_the_backoff_cap() -> None:
    dep = Dependency()
    monitor = Monitor("dep", dep.probe, interval_s=30, backoff_cap_s=0.2)
    monitor.start()
    try:
        await wait_for(lambda: dep.calls >= 3)  # down: probed again and again
        dep.failure = None
        loop = asyncio.get_running_loop()
        back_at = loop.time()
        await wait_for(lambda: monitor.healthy)
        assert loop.time() - back_at <= 0.5
    finally:
        await monitor.stop()


async def test_a_reported_failure_flips_state_and_wakes_the_probe() -> None:
    dep = Dependency()
    dep.failure = None
    monitor = Monitor("dep", dep.probe, interval_s=30)
    monitor.start()
    try:
        await wait_for(lambda: monitor.healthy)
        calls = dep.calls
        dep.failure = ProbeFailed("refused", starting=True)
        monitor.report_failure("connection refused", starting=True)
        assert monitor.state.status == Health.UNHEALTHY  # at once, not at the next interval
        await wait_for(lambda: dep.calls > calls)  # woke up long before 30 s
    finally:
        await monitor.stop()


async def test_a_probe_that_crashes_does_not_kill_the_monitor() -> None:
    async def broken() -> None:
        raise KeyError("bug")

    monitor = Monitor("dep", broken)
    assert await monitor.check_now() is False
    assert monitor.state.status == Health.UNHEALTHY and "KeyError" in (
        monitor.state.last_error or ""
    )


@pytest.mark.parametrize("starting", [True, False])
async def test_report_failure_sets_the_matching_state(starting: bool) -> None:
    monitor = Monitor("dep", Dependency().probe)
    monitor.report_failure("x", starting=starting)
    assert monitor.state.status == (Health.STARTING if starting else Health.UNHEALTHY)


async def test_a_dependency_that_was_up_and_went_down_stays_unhealthy_until_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The embedder crashed after being healthy: its port refuses connections like a
    # loading one, and probes and requests alternate "starting" and "unhealthy" verdicts.
    dep = Dependency()
    dep.failure = None
    changes: list[tuple[str, str]] = []
    monitor = Monitor("embedder", dep.probe, on_change=lambda a, b: changes.append((a, b)))
    assert await monitor.check_now() is True
    with caplog.at_level("INFO", logger="gateway"):
        dep.failure = ProbeFailed("connection refused", starting=True)
        for _ in range(3):
            await monitor.check_now()
            assert monitor.state.status == Health.UNHEALTHY
            monitor.report_failure("embedder answered 500")
            assert monitor.state.status == Health.UNHEALTHY
            monitor.report_failure("connection refused", starting=True)
            assert monitor.state.status == Health.UNHEALTHY
        dep.failure = None
        assert await monitor.check_now() is True
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["embedder: healthy -> unhealthy (connection refused)"]  # once
    assert changes == [
        (Health.STARTING, Health.HEALTHY),
        (Health.HEALTHY, Health.UNHEALTHY),
        (Health.UNHEALTHY, Health.HEALTHY),
    ]


def test_losing_a_dependency_is_a_warning_and_its_return_is_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor = Monitor("embedder", Dependency().probe)
    with caplog.at_level("INFO", logger="gateway"):
        monitor.report_success()
        monitor.report_failure("health answered 500")
        monitor.report_success()
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("INFO", "embedder: starting -> healthy (ok)"),
        ("WARNING", "embedder: healthy -> unhealthy (health answered 500)"),
        ("INFO", "embedder: unhealthy -> healthy (ok)"),
    ]
