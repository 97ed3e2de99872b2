"""A circuit breaker per upstream: a pure state machine, driven by a clock.

closed → open after ``failure_threshold`` consecutive failures; open → half_open
once ``reset_timeout_s`` has passed, letting exactly one trial request through;
the trial's success closes the breaker, its failure opens it again, and an
outcome that says nothing of the upstream's health (a 4xx or 429 answer, a client
that left) ends the trial without a verdict, so the next request is the trial.
A trial that never reports (a bug, a task cancelled in between) stops counting
after ``reset_timeout_s``: the half-open breaker can never wedge shut.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.enums import BreakerState


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_started: float | None = None  # when the half-open trial went out

    @property
    def state(self) -> BreakerState:
        if (
            self._state == BreakerState.OPEN
            and self._clock() - self._opened_at >= self._reset_timeout_s
        ):
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a request go out now? In half-open, only one trial at a time."""
        state = self.state
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.HALF_OPEN and not self._trial_pending():
            self._trial_started = self._clock()
            return True
        return False

    def would_allow(self) -> bool:
        """Like allow(), without claiming the half-open trial."""
        state = self.state
        return state == BreakerState.CLOSED or (
            state == BreakerState.HALF_OPEN and not self._trial_pending()
        )

    def _trial_pending(self) -> bool:
        started = self._trial_started
        return started is not None and self._clock() - started < self._reset_timeout_s

    def record_success(self) -> None:
        self._failures = 0
        self._trial_started = None
        self._set(BreakerState.CLOSED)

    def record_neutral(self) -> None:
        """An outcome that proves nothing either way: the trial, if any, is over."""
        self._trial_started = None

    def record_failure(self) -> None:
        self._trial_started = None
        if self._state == BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def reset(self) -> None:
        """The health monitor saw the upstream come back: trust it again."""
        self._failures = 0
        self._trial_started = None
        self._set(BreakerState.CLOSED)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state != self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
