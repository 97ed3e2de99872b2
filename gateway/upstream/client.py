"""One LLM replica: an OpenAI-compatible server (vLLM, or a cloud API)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.monitor import Monitor, ProbeFailed
from gateway.upstream.breaker import CircuitBreaker
from gateway.upstream.http import (
    ConnectFailed,
    Reply,
    Timeouts,
    TransportError,
    UpstreamHTTP,
    timeouts_for,
)
from gateway.urls import service_root

# A health check that waits longer than this has failed: a server too busy to
# answer /health in 10 s should not be sent more work.
PROBE_TIMEOUTS = timeouts_for(read_s=10.0, connect_s=2.0)


@dataclass(frozen=True)
class Call:
    """Which endpoint of the upstream a request goes to.

    ``path`` is relative to the upstream's OpenAI base URL (``/chat/completions``
    for ``http://host:8000/v1``); with ``root`` it is relative to the server's
    root instead, for vLLM's endpoints outside ``/v1`` (``/tokenize``).
    ``content_type`` is the body's, forwarded as the client sent it (a multipart
    body needs its boundary); ``query`` the client's query string, if any.
    """

    path: str = "/chat/completions"
    method: str = "POST"
    content_type: str = "application/json"
    query: str = ""
    root: bool = False


CHAT = Call()


class Upstream:
    """A replica. ``group`` names the upstream it belongs to (replicas share it)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        http: UpstreamHTTP,
        *,
        api_key: str | None = None,
        group: str | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.group = group or name
        self.base_url = base_url
        self.breaker = breaker or CircuitBreaker()
        # Model ids the server lists at /v1/models, refreshed by every good probe.
        self.models: list[dict[str, Any]] = []
        self.model_ids: frozenset[str] = frozenset()
        self.discovered = False
        self._http = http
        self._models_url = f"{base_url}/models"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._root = service_root(base_url)
        self._health_url = f"{self._root}/health"
        self.monitor: Monitor | None = None

    @property
    def healthy(self) -> bool:
        return self.monitor is None or self.monitor.healthy

    async def send_chat(self, body: bytes, *, request_id: str | None, timeouts: Timeouts) -> Reply:
        """Send a chat request and return once the response headers are in."""
        return await self.send(CHAT, body, request_id=request_id, timeouts=timeouts)

    async def send(
        self, call: Call, body: bytes | None, *, request_id: str | None, timeouts: Timeouts
    ) -> Reply:
        """Send ``body`` to ``call``'s endpoint; return once the response headers are in.

        A connection that the server closed as it was reused is not the
        server failing: the request goes once more on a fresh connection.
        """
        headers = self._headers
        if call.content_type != headers["Content-Type"] or request_id:
            headers = {**headers, "Content-Type": call.content_type}
            if request_id:
                headers["X-Request-Id"] = request_id
        url = (self._root if call.root else self.base_url) + call.path
        if call.query:
            url += "?" + call.query
        return await self._http.request(
            call.method, url, body=body, headers=headers, timeouts=timeouts
        )

    async def probe(self) -> None:
        """``/health`` (vLLM) when it exists, then ``/v1/models``, which also tells
        which models this replica serves."""
        health, _ = await self._get(self._health_url)
        if health not in (200, 404, 405):  # 404/405: no /health here
            # vLLM answers 503 while the engine is still starting.
            raise ProbeFailed(f"/health answered {health}", starting=health == 503)
        status, listing = await self._get(self._models_url)
        if status != 200:
            raise ProbeFailed(f"/v1/models answered {status}", starting=status == 503)
        try:
            data = json.loads(listing).get("data", [])
            models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, AttributeError):
            raise ProbeFailed("/v1/models did not answer an OpenAI model list") from None
        self.models, self.model_ids = models, frozenset(m["id"] for m in models)
        self.discovered = True

    async def _get(self, url: str) -> tuple[int, bytes]:
        """The status and body of a GET."""
        try:
            reply = await self._http.request(
                "GET", url, headers=self._headers, timeouts=PROBE_TIMEOUTS
            )
            try:
                return reply.status_code, await reply.aread()
            finally:
                await reply.aclose()
        except ConnectFailed as exc:
            raise ProbeFailed(f"connection refused: {exc}", starting=True) from exc
        except TransportError as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
