"""Every LLM replica the gateway knows, by upstream, each with its health monitor.

This is the one index of replicas: the router adds and removes whole
upstreams here (configured ones at start, registered ones at run time), and
reads an upstream's replicas when it routes; the pool is handed the targets
of one request and keeps no list of its own. A replica's monitor runs from
``start`` on (or from ``add``, when the index runs already) until its
upstream is removed or the index stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gateway.enums import Availability, Health
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor
from gateway.upstream.replica import Upstream
from gateway.urls import redact_text, redact_url


def status_of(upstreams: Sequence[Upstream]) -> Availability:
    """healthy: one can serve; starting: none can, one is coming up; else unavailable."""
    if any(u.healthy for u in upstreams):
        return Availability.HEALTHY
    if any(u.monitor is not None and u.monitor.state.status == Health.STARTING for u in upstreams):
        return Availability.STARTING
    return Availability.UNAVAILABLE


def redacted_state(monitor: Monitor) -> dict[str, Any]:
    """A monitor's state as shown: its last error may quote a URL with a key in it."""
    state = monitor.state.to_json()
    if state.get("last_error"):
        state["last_error"] = redact_text(state["last_error"])
    return state


class Replicas:
    """Replicas by the name of the upstream they belong to, in the order added."""

    def __init__(self, metrics: GatewayMetrics, *, health_interval_s: float) -> None:
        self._groups: dict[str, tuple[Upstream, ...]] = {}
        self._metrics = metrics
        self._health_interval_s = health_interval_s
        self._running = False

    # -- membership (the router's to change) ----------------------------------

    def add(self, group: str, replicas: Sequence[Upstream]) -> None:
        """Add an upstream and its replicas; each gets its monitor (started if running)."""
        if group in self._groups:
            raise ValueError(f"upstream {group!r} exists already")
        names = [replica.name for replica in replicas]
        taken = [name for name in names if self.get(name) is not None]
        if taken or len(set(names)) < len(names):
            raise ValueError(f"upstream {(taken or names)[0]!r} exists already")
        for replica in replicas:
            self._watch(replica)
        self._groups[group] = tuple(replicas)

    async def remove(self, group: str) -> None:
        """Remove an upstream: its replicas' monitors stop, their metrics go."""
        for replica in self._groups.pop(group, ()):
            if replica.monitor is not None:
                await replica.monitor.stop()
            self._metrics.remove_upstream(replica.name)

    def _watch(self, upstream: Upstream) -> None:
        upstream.monitor = Monitor(
            f"llm:{upstream.name}",
            upstream.probe,
            interval_s=self._health_interval_s,
            on_change=self._state_listener(upstream),
        )
        self._metrics.init_upstream(upstream.name)
        self._metrics.set_upstream_state(upstream.name, Health.STARTING)
        self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
        if self._running:
            upstream.monitor.start()

    def _state_listener(self, upstream: Upstream) -> Callable[[Health, Health], None]:
        def changed(_: Health, status: Health) -> None:
            self._metrics.set_upstream_state(upstream.name, status)
            if status == Health.HEALTHY:
                upstream.breaker.reset()
            self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)

        return changed

    # -- reading ---------------------------------------------------------------

    def __iter__(self) -> Iterator[Upstream]:
        """Every replica, upstream by upstream."""
        for replicas in self._groups.values():
            yield from replicas

    def groups(self) -> Iterator[tuple[str, tuple[Upstream, ...]]]:
        """Each upstream's name and replicas."""
        yield from self._groups.items()

    def group(self, name: str) -> tuple[Upstream, ...]:
        """The replicas of upstream ``name`` (none if there is no such upstream)."""
        return self._groups.get(name, ())

    def __contains__(self, group: object) -> bool:
        return group in self._groups

    def get(self, name: str) -> Upstream | None:
        """The replica called ``name``, if any."""
        return next((replica for replica in self if replica.name == name), None)

    def monitors(self) -> list[Monitor]:
        return [u.monitor for u in self if u.monitor is not None]

    def status(self) -> Availability:
        return status_of(list(self))

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each replica's state, for /readyz and the admin API."""
        return {
            u.name: {
                **(redacted_state(u.monitor) if u.monitor else {}),
                "upstream": u.group,
                "url": redact_url(u.base_url),
                "breaker": u.breaker.state,
                "models": sorted(u.model_ids),
            }
            for u in self
        }

    # -- lifecycle -------------------------------------------------------------

    async def start(self, first_probe_timeout_s: float) -> None:
        """Probe every replica once (so the first state is real), then keep watching."""
        monitors = self.monitors()
        if monitors:
            await asyncio.wait(
                [asyncio.create_task(m.check_now()) for m in monitors],
                timeout=first_probe_timeout_s,
            )
        for monitor in monitors:
            monitor.start()
        self._running = True

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*(m.stop() for m in self.monitors()))

    async def check_now(self, group: str) -> None:
        """Probe the replicas of ``group`` now (a model just registered)."""
        for replica in self.group(group):
            if replica.monitor is not None:
                await replica.monitor.check_now()
