"""Background health monitors: each dependency's state comes from here.

Probes never run on the request path: ``/readyz`` and the routers read the
last known state, so a dead dependency costs them nothing. While a dependency
is down it is probed with capped exponential backoff plus jitter; the cap is
low (1 s by default) so a returning dependency is seen within about a second.
A request that hits a failure reports it here, which flips the state at once
and wakes the probe loop.

``starting`` describes a dependency that has not come up yet (vLLM loading its
model refuses connections for minutes). Once one has been healthy, losing it is
``unhealthy`` until it is back, whatever the failure looks like: a crashed
embedder also refuses connections, and reporting it as "starting" would hide
the outage from ``/readyz`` and from the one WARNING line an operator looks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.enums import Health

logger = logging.getLogger("gateway.monitor")


class ProbeFailed(Exception):
    """A probe's verdict. ``starting`` means "not listening or still loading"."""

    def __init__(self, message: str, *, starting: bool = False) -> None:
        super().__init__(message)
        self.starting = starting


Probe = Callable[[], Awaitable[None]]


def next_backoff(previous_s: float, *, base_s: float, cap_s: float) -> float:
    """Capped exponential backoff with full jitter in its upper half."""
    target = min(cap_s, max(base_s, previous_s * 2))
    return random.uniform(target / 2, target)


@dataclass
class DependencyState:
    status: Health = Health.STARTING
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_error: str | None = None
    last_success: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "since": self.since.isoformat(),
            "last_error": self.last_error,
            "last_success": self.last_success.isoformat() if self.last_success else None,
        }


class Monitor:
    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        interval_s: float = 5.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 1.0,
        on_change: Callable[[Health, Health], None] | None = None,
    ) -> None:
        self.name = name
        self.state = DependencyState()
        self._probe = probe
        self._interval_s = interval_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._was_up = False  # healthy at least once: later failures are outages

    @property
    def healthy(self) -> bool:
        return self.state.status == Health.HEALTHY

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"monitor-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def check_now(self) -> bool:
        """Probe once, now (used at start-up so the first state is real)."""
        await self._probe_once()
        return self.healthy

    def wake(self) -> None:
        """Probe now rather than at the next interval (something looked wrong)."""
        self._wake.set()

    def report_success(self) -> None:
        self._set(Health.HEALTHY, None)

    def report_failure(self, error: str, *, starting: bool = False) -> None:
        self._set(Health.STARTING if starting else Health.UNHEALTHY, error)
        self._wake.set()

    def _set(self, status: Health, error: str | None) -> None:
        now = datetime.now(UTC)
        if status == Health.HEALTHY:
            self.state.last_success = now
            self._was_up = True
        elif status == Health.STARTING and self._was_up:
            status = Health.UNHEALTHY
        if error is not None:
            self.state.last_error = error
        if status != self.state.status:
            # Losing a dependency is what an operator looks for; the rest is routine.
            # Unhealthy is sticky until the next success, so this logs once per outage.
            level = logging.WARNING if status == Health.UNHEALTHY else logging.INFO
            logger.log(
                level, "%s: %s -> %s (%s)", self.name, self.state.status, status, error or "ok"
            )
            previous = self.state.status
            self.state.status, self.state.since = status, now
            if self._on_change is not None:
                self._on_change(previous, status)

    async def _probe_once(self) -> None:
        try:
            await self._probe()
        except ProbeFailed as exc:
            self._set(Health.STARTING if exc.starting else Health.UNHEALTHY, str(exc))
        except Exception as exc:  # a probe bug must not kill the monitor
            self._set(Health.UNHEALTHY, f"{type(exc).__name__}: {exc}")
        else:
            self._set(Health.HEALTHY, None)

    async def _run(self) -> None:
        delay = 0.0
        while True:
            self._wake.clear()
            started = time.monotonic()
            await self._probe_once()
            if self.healthy:
                delay = self._interval_s
            else:
                delay = next_backoff(
                    delay if delay < self._interval_s else 0.0,
                    base_s=self._backoff_base_s,
                    cap_s=self._backoff_cap_s,
                )
            remaining = delay - (time.monotonic() - started)
            if remaining > 0:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that comes as the event is set, and stop() would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
