"""The upstream pool: which LLM serves a request, with retries and fallback.

Upstreams are tried in order (the primary, then the fallback). One is
eligible when its health monitor says healthy and its breaker lets a request
through. When none is, the pool fails at once (the router answers 503 with
``Retry-After``) instead of making the client wait on a dead server.

Retries (tenacity) cover connection errors, timeouts before the response
began, and 429/502/503/504, honouring ``Retry-After`` up to a cap. They
happen only here, before any byte has been relayed to the client: once a
stream has started it is never retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gateway.metrics import GatewayMetrics
from gateway.monitor import HEALTHY, STARTING, Monitor
from gateway.upstream.client import Upstream

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
MAX_RETRY_AFTER_S = 2.0


class NoUpstreamAvailable(Exception):
    """No upstream can take a request now. ``starting``: one is still coming up."""

    def __init__(self, starting: bool, detail: str) -> None:
        super().__init__(detail)
        self.starting = starting


class UpstreamFailed(Exception):
    """Every attempt failed; carries what the last one saw, for the client."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _Retryable(Exception):
    def __init__(self, failure: UpstreamFailed) -> None:
        super().__init__(str(failure))
        self.failure = failure


@dataclass
class OpenedReply:
    upstream: Upstream
    response: httpx.Response
    sent_at: float


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class _Wait:
    """Exponential backoff with jitter, or the upstream's Retry-After (capped)."""

    def __init__(self) -> None:
        self._backoff = wait_exponential_jitter(initial=0.05, max=0.5, jitter=0.05)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.failure.retry_after is not None:
            return min(exc.failure.retry_after, MAX_RETRY_AFTER_S)
        return float(self._backoff(state))


class UpstreamPool:
    def __init__(
        self,
        upstreams: Sequence[Upstream],
        metrics: GatewayMetrics,
        *,
        attempts: int,
        health_interval_s: float,
    ) -> None:
        self.upstreams = list(upstreams)
        self._metrics = metrics
        self._attempts = attempts
        for upstream in self.upstreams:
            upstream.monitor = Monitor(
                f"llm:{upstream.name}",
                upstream.probe,
                interval_s=health_interval_s,
                on_change=self._state_listener(upstream),
            )
            metrics.set_upstream_state(upstream.name, STARTING)
            metrics.set_breaker_state(upstream.name, upstream.breaker.state)

    def _state_listener(self, upstream: Upstream) -> Callable[[str, str], None]:
        def changed(_: str, status: str) -> None:
            self._metrics.set_upstream_state(upstream.name, status)
            if status == HEALTHY:
                upstream.breaker.reset()
            self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)

        return changed

    def monitors(self) -> list[Monitor]:
        return [u.monitor for u in self.upstreams if u.monitor is not None]

    @property
    def primary(self) -> Upstream:
        return self.upstreams[0]

    def status(self) -> str:
        """healthy: one can serve; starting: none can, one is coming up; else unavailable."""
        if any(u.healthy for u in self.upstreams):
            return HEALTHY
        if any(m.state.status == STARTING for m in self.monitors()):
            return STARTING
        return "unavailable"

    def _pick(self) -> Upstream:
        for upstream in self.upstreams:
            if upstream.healthy and upstream.breaker.allow():
                self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
                return upstream
        status = self.status()
        detail = "; ".join(
            f"{u.name}: {u.monitor.state.status if u.monitor else '?'} (breaker {u.breaker.state})"
            for u in self.upstreams
        )
        raise NoUpstreamAvailable(status == STARTING, detail)

    async def open_chat(
        self,
        encode: Callable[[Upstream], bytes],
        *,
        timeouts: httpx.Timeout,
        request_id: str | None,
    ) -> OpenedReply:
        """Send to the first eligible upstream, retrying before any byte is relayed."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=_Wait(),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._metrics.upstream_retries.labels(self.primary.name).inc()
                    return await self._attempt(encode, timeouts, request_id)
        except _Retryable as exc:
            raise exc.failure from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(
        self, encode: Callable[[Upstream], bytes], timeouts: httpx.Timeout, request_id: str | None
    ) -> OpenedReply:
        upstream = self._pick()
        sent_at = time.perf_counter()
        try:
            response = await upstream.send_chat(
                encode(upstream), request_id=request_id, timeouts=timeouts
            )
        except httpx.ConnectError as exc:
            self._failed(upstream, "connect_error", f"connection refused: {exc}", starting=True)
            raise _Retryable(UpstreamFailed(503, f"LLM upstream {upstream.name} refused")) from exc
        except httpx.TimeoutException as exc:
            self._failed(upstream, "timeout", f"timed out: {type(exc).__name__}")
            raise _Retryable(
                UpstreamFailed(504, f"LLM upstream {upstream.name} timed out")
            ) from exc
        except httpx.TransportError as exc:
            self._failed(upstream, "connect_error", f"{type(exc).__name__}: {exc}")
            raise _Retryable(UpstreamFailed(502, f"LLM upstream {upstream.name} failed")) from exc

        if response.status_code in RETRYABLE_STATUS:
            retry_after = _retry_after(response)
            await response.aread()
            await response.aclose()
            self._metrics.upstream_requests.labels(upstream.name, "http_error").inc()
            if response.status_code != 429:  # 429 is load, not a broken upstream
                upstream.breaker.record_failure()
                self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
            message = f"LLM upstream {upstream.name} answered {response.status_code}"
            raise _Retryable(UpstreamFailed(response.status_code, message, retry_after))

        if upstream is not self.primary:
            self._metrics.upstream_fallbacks.labels(upstream.name).inc()
        return OpenedReply(upstream, response, sent_at)

    def _failed(self, upstream: Upstream, outcome: str, error: str, starting: bool = False) -> None:
        self._metrics.upstream_requests.labels(upstream.name, outcome).inc()
        upstream.breaker.record_failure()
        self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
        if upstream.monitor is not None:
            upstream.monitor.report_failure(error, starting=starting)

    def record_outcome(self, upstream: Upstream, outcome: str) -> None:
        """The router reports how a relayed response ended."""
        self._metrics.upstream_requests.labels(upstream.name, outcome).inc()
        if outcome == "success":
            upstream.breaker.record_success()
        elif outcome in ("stream_error", "timeout"):
            upstream.breaker.record_failure()
            if upstream.monitor is not None:
                upstream.monitor.wake()  # died mid-stream? find out now
        self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
