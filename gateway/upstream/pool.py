"""The upstream pool: which LLM serves a request, with retries and fallback.

Upstreams are tried in order (the primary, then the fallback). One is
eligible when its health monitor says healthy and its breaker lets a request
through. When none is, the pool fails at once (``NoUpstreamAvailable``: a 503
with ``Retry-After``, gateway.exceptions) instead of making the client wait
on a dead server.

Retries (tenacity) happen only where no generation can still be running
upstream: the connection was refused or not made in time (the request was
never sent), the upstream answered 429, 502 or 503 at once (it refused the
work; ``Retry-After`` is honoured up to a cap), or it closed the connection
without answering (it died or restarted, and its work with it). A request
that was sent and then met silence (a read timeout, no headers in time), a
malformed answer, or a 504 (a proxy in front timed out while the model may
still be generating) is answered to the client at once: retrying those
would repeat whole generations, multiplying the GPU work under exactly the
load that caused the timeout. Once a stream has started it is never retried.

A 500 is the one answer that may be either side's fault: an upstream that
is broken, or one that answers a request it cannot take with a 500 (the
llama.cpp server does, for a message it cannot parse). So it never counts
against a breaker by itself, which one tenant's bad requests would open for
every tenant. Instead, when another replica of the same upstream could take
the request, it goes there (a 500 generated nothing); and if that replica
serves it, the one that answered 500 is blamed, a failure on its breaker. A
replica that fails every request while its health check passes is taken
out of rotation that way; a request that fails everywhere blames nobody.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from gateway.enums import BreakerState, UpstreamOutcome
from gateway.exceptions import NoUpstreamAvailable, UpstreamFailed
from gateway.metrics import GatewayMetrics
from gateway.upstream.availability import why_unavailable
from gateway.upstream.http import (
    ConnectFailed,
    ConnectTimedOut,
    Disconnected,
    Reply,
    TimedOut,
    Timeouts,
    TransportError,
)
from gateway.upstream.replica import CHAT, Call, Upstream

RETRYABLE_STATUS = frozenset({429, 502, 503})  # refusals: nothing was generated
# Answered as the upstream's failure (504 to the client), never retried.
GATEWAY_TIMEOUT = 504
INTERNAL_ERROR = 500
MAX_RETRY_AFTER_S = 2.0


class _Retryable(Exception):
    def __init__(self, failure: UpstreamFailed) -> None:
        super().__init__(str(failure))
        self.failure = failure


@dataclass(frozen=True)
class Target:
    """One place a request may go: a replica, and the model name to send there
    (None: the client's own)."""

    upstream: Upstream
    model: str | None = None


@dataclass
class OpenedReply:
    target: Target
    response: Reply
    sent_at: float

    @property
    def upstream(self) -> Upstream:
        return self.target.upstream


MAX_RETRY_AFTER_HEADER_S = 3600.0


def _retry_after(response: Reply) -> float | None:
    """Retry-After in seconds: finite and capped, whatever the upstream wrote."""
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(0.0, value), MAX_RETRY_AFTER_HEADER_S) if math.isfinite(value) else None


def _could_serve(upstream: Upstream) -> bool:
    """Eligible now, asked without side effects (``allow`` may start a trial)."""
    return upstream.healthy and upstream.breaker.state == BreakerState.CLOSED


class _Wait:
    """Exponential backoff with jitter, or the upstream's Retry-After (capped)."""

    def __init__(self) -> None:
        self._backoff = wait_exponential_jitter(multiplier=0.05, max=0.5, jitter=0.05)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.failure.retry_after is not None:
            return min(exc.failure.retry_after, MAX_RETRY_AFTER_S)
        return float(self._backoff(state))


class UpstreamPool:
    """Sends a request to the first eligible of its targets, with retries and fallback.

    It keeps no list of replicas (gateway.upstream.replicas does): each request
    brings its targets, in order of preference, from the router.
    """

    def __init__(self, metrics: GatewayMetrics, *, attempts: int) -> None:
        self._metrics = metrics
        # The retry policy is stateless: built once, shared by every request's AsyncRetrying.
        self._stop = stop_after_attempt(attempts)
        self._wait = _Wait()
        self._retry_on = retry_if_exception_type(_Retryable)

    def _pick(self, targets: Sequence[Target], answered_500: Sequence[Upstream] = ()) -> Target:
        """The first eligible target, passing over the replicas that answered this
        request 500 while another is eligible."""
        if answered_500:
            others = [t for t in targets if t.upstream not in answered_500]
            if any(_could_serve(t.upstream) for t in others):
                targets = others
        for target in targets:
            upstream = target.upstream
            if upstream.healthy and upstream.breaker.allow():
                self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
                return target
        upstreams = [t.upstream for t in targets]
        detail = "; ".join(
            f"{u.name}: {u.monitor.state.status if u.monitor else '?'} (breaker {u.breaker.state})"
            for u in upstreams
        )
        verdict = why_unavailable(upstreams)
        raise NoUpstreamAvailable(detail, code=verdict.code, reason=verdict.message)

    async def open_chat(
        self,
        targets: Sequence[Target],
        encode: Callable[[Target], bytes],
        *,
        timeouts: Timeouts,
        headers_timeout_s: float,
        request_id: str | None,
        call: Call = CHAT,
    ) -> OpenedReply:
        """Send to the first eligible target, retrying before any byte is relayed.

        ``targets`` are in order of preference: the replicas serving the model
        (already rotated for load balancing), then its fallbacks. ``call`` names
        the endpoint (chat completions unless said otherwise).
        """
        retrying = AsyncRetrying(
            stop=self._stop, wait=self._wait, retry=self._retry_on, reraise=True
        )
        answered_500: list[Upstream] = []  # the replicas that answered this request 500
        try:
            async for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._metrics.upstream_retries.labels(targets[0].upstream.name).inc()
                    opened = await self._attempt(
                        targets, encode, timeouts, headers_timeout_s, request_id, call,
                        answered_500,
                    )  # fmt: skip
                    self._blame(answered_500, opened)
                    return opened
        except _Retryable as exc:
            raise exc.failure from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(
        self,
        targets: Sequence[Target],
        encode: Callable[[Target], bytes],
        timeouts: Timeouts,
        headers_timeout_s: float,
        request_id: str | None,
        call: Call,
        answered_500: list[Upstream],
    ) -> OpenedReply:
        target = self._pick(targets, answered_500)
        upstream = target.upstream
        sent_at = time.perf_counter()
        try:
            # The client bounds each read; this bounds the wait for the whole head of the answer.
            async with asyncio.timeout(headers_timeout_s):
                response = await upstream.send(
                    call, encode(target), request_id=request_id, timeouts=timeouts
                )
        except asyncio.CancelledError:
            # The client left (or the shutdown grace ran out) before the answer's head,
            # which for a completion comes only when it is generated: counted as such,
            # and a half-open trial is over (it proved nothing).
            self._metrics.upstream_requests.labels(
                upstream.name, UpstreamOutcome.CLIENT_DISCONNECT
            ).inc()
            upstream.breaker.record_neutral()
            raise
        except ConnectFailed as exc:  # never sent: another attempt costs the upstream nothing
            starting = upstream.note_refused()
            self._failed(
                upstream,
                UpstreamOutcome.CONNECT_ERROR,
                f"connection refused: {exc}",
                starting=starting,
            )
            raise _Retryable(UpstreamFailed(503, f"LLM upstream {upstream.name} refused")) from exc
        except ConnectTimedOut as exc:
            self._failed(upstream, UpstreamOutcome.TIMEOUT, f"connect timed out: {exc}")
            raise _Retryable(
                UpstreamFailed(504, f"LLM upstream {upstream.name} did not accept a connection")
            ) from exc
        except Disconnected as exc:
            # Closed without an answer: the upstream died or restarted, and whatever it
            # was doing went with the connection, so another attempt repeats nothing
            # still running.
            self._failed(upstream, UpstreamOutcome.CONNECT_ERROR, f"disconnected: {exc}")
            raise _Retryable(UpstreamFailed(502, f"LLM upstream {upstream.name} failed")) from exc
        # Sent, then silence or a broken answer: it may be generating. Not retried.
        except (TimeoutError, TimedOut) as exc:
            error = str(exc) or "no response headers in time"
            self._failed(upstream, UpstreamOutcome.TIMEOUT, f"timed out: {error}")
            raise UpstreamFailed(504, f"LLM upstream {upstream.name} timed out") from None
        except TransportError as exc:
            self._failed(upstream, UpstreamOutcome.CONNECT_ERROR, f"{type(exc).__name__}: {exc}")
            raise UpstreamFailed(502, f"LLM upstream {upstream.name} failed") from exc
        upstream.note_answered()

        if response.status_code in RETRYABLE_STATUS or response.status_code == GATEWAY_TIMEOUT:
            retry_after = _retry_after(response)
            try:
                await response.aread()  # so the connection can be reused
            except TransportError:
                pass  # a broken error body changes nothing: this attempt failed
            finally:
                await response.aclose()
            self._metrics.upstream_requests.labels(upstream.name, UpstreamOutcome.HTTP_ERROR).inc()
            if response.status_code == 429:  # load, not a broken upstream
                upstream.breaker.record_neutral()
            else:
                upstream.breaker.record_failure()
                self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
            message = f"LLM upstream {upstream.name} answered {response.status_code}"
            failure = UpstreamFailed(response.status_code, message, retry_after)
            if response.status_code == GATEWAY_TIMEOUT:
                raise failure
            raise _Retryable(failure)

        if response.status_code == INTERNAL_ERROR and any(
            t.upstream.group == upstream.group
            and t.upstream is not upstream
            and t.upstream not in answered_500
            and _could_serve(t.upstream)
            for t in targets
        ):
            # Another replica can take it: nothing was generated, so it goes there.
            try:
                await response.aread()
            except TransportError:
                pass
            finally:
                await response.aclose()
            self._metrics.upstream_requests.labels(upstream.name, UpstreamOutcome.HTTP_ERROR).inc()
            answered_500.append(upstream)
            raise _Retryable(UpstreamFailed(502, f"LLM upstream {upstream.name} answered 500"))

        if target.upstream.group != targets[0].upstream.group:
            self._metrics.upstream_fallbacks.labels(upstream.name).inc()
        return OpenedReply(target, response, sent_at)

    def _blame(self, answered_500: Sequence[Upstream], opened: OpenedReply) -> None:
        """Another replica of the same upstream took the request that these
        answered 500, and served it (a 200): theirs was the fault (a failure on
        each one's breaker). Refused there too (a 4xx), it may be the request's."""
        if opened.response.status_code != 200:
            return
        for upstream in answered_500:
            if upstream.group == opened.upstream.group:
                upstream.breaker.record_failure()
                self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)

    def _failed(
        self, upstream: Upstream, outcome: UpstreamOutcome, error: str, starting: bool = False
    ) -> None:
        self._metrics.upstream_requests.labels(upstream.name, outcome).inc()
        upstream.breaker.record_failure()
        self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
        if upstream.monitor is not None:
            upstream.monitor.report_failure(error, starting=starting)

    def record_outcome(self, upstream: Upstream, outcome: UpstreamOutcome) -> None:
        """The router reports how a relayed response ended."""
        self._metrics.upstream_requests.labels(upstream.name, outcome).inc()
        if outcome == UpstreamOutcome.SUCCESS:
            upstream.breaker.record_success()
        elif outcome in (UpstreamOutcome.STREAM_ERROR, UpstreamOutcome.TIMEOUT):
            upstream.breaker.record_failure()
            if upstream.monitor is not None:
                upstream.monitor.wake()  # died mid-stream? find out now
        else:  # its 4xx answer, or a client that left: no verdict, but the trial is over
            upstream.breaker.record_neutral()
        self._metrics.set_breaker_state(upstream.name, upstream.breaker.state)
