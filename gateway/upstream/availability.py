"""Why no LLM can take a request: the code and message of the 503.

Three cases, which a client (and an operator reading its logs) handles differently:

- ``llm_starting``: the LLM is coming up. Its server answers but is still
  loading (vLLM's ``/health`` and llama.cpp's answer 503 then), or nothing
  listens yet at an address that was never seen up, for less than
  ``GATEWAY_LLM_START_GRACE_S`` (vLLM opens its port only once its model is
  loaded). Retrying shortly is right.
- ``llm_unreachable``: nothing answers at all. Connections are refused (or the
  name does not resolve) by a server that was up before and went away, or by
  one never seen up for longer than the grace period: something has to be
  started or ``GATEWAY_LLM_URL`` fixed. Retrying still works once it is back
  (the gateway reconnects by itself).
- ``llm_unavailable``: a server answers but fails (errors, a bad model list,
  an open circuit breaker).

All three are 503 with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.enums import Health
from gateway.upstream.replica import Upstream

STARTING_CODE, UNREACHABLE_CODE, UNAVAILABLE_CODE = (
    "llm_starting",
    "llm_unreachable",
    "llm_unavailable",
)


@dataclass(frozen=True)
class Verdict:
    code: str
    message: str


def _refused_for(upstream: Upstream, now: float) -> str:
    since = upstream.refused_since
    return f"{now - since:.0f} s" if since is not None else "a moment"


def why_unavailable(upstreams: Sequence[Upstream], now: float | None = None) -> Verdict:
    """The 503's code and message when none of ``upstreams`` can take a request."""
    now = time.monotonic() if now is None else now
    starting = [u for u in upstreams if u.monitor and u.monitor.state.status == Health.STARTING]
    if starting:
        first = starting[0]
        if first.refusing:
            return Verdict(
                STARTING_CODE,
                f"the LLM is starting: nothing listens at upstream {first.name!r} yet "
                f"(for {_refused_for(first, now)}; vLLM opens its port once its model is "
                "loaded); retry shortly",
            )
        return Verdict(STARTING_CODE, "the LLM is starting (loading its model); retry shortly")
    if upstreams and all(u.refusing for u in upstreams):
        names = ", ".join(f"{u.name!r} for {_refused_for(u, now)}" for u in upstreams)
        return Verdict(
            UNREACHABLE_CODE,
            f"no LLM answers: connections refused ({names}); is the LLM server running "
            "at the configured URL (GATEWAY_LLM_URL)?",
        )
    return Verdict(UNAVAILABLE_CODE, "no LLM upstream is available")
