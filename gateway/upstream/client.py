"""One LLM replica: an OpenAI-compatible server (vLLM, or a cloud API)."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.keepalive import resend_if_dropped
from gateway.monitor import Monitor, ProbeFailed
from gateway.upstream.breaker import CircuitBreaker
from gateway.urls import service_root


class Upstream:
    """A replica. ``group`` names the upstream it belongs to (replicas share it)."""

    def __init__(
        self,
        name: str,
        base_url: str,
        http: httpx.AsyncClient,
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
        self._chat_url = f"{base_url}/chat/completions"
        self._models_url = f"{base_url}/models"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._health_url = f"{service_root(base_url)}/health"
        self.monitor: Monitor | None = None

    @property
    def healthy(self) -> bool:
        return self.monitor is None or self.monitor.healthy

    async def send_chat(
        self, body: bytes, *, request_id: str | None, timeouts: httpx.Timeout
    ) -> httpx.Response:
        """Send a chat request and return once the response headers are in.

        A connection that the server closed as it was reused is not the
        server failing: the request goes once more on a fresh connection.
        """
        headers = dict(self._headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        request = self._http.build_request(
            "POST", self._chat_url, content=body, headers=headers, timeout=timeouts
        )
        return await resend_if_dropped(lambda: self._http.send(request, stream=True))

    async def probe(self) -> None:
        """``/health`` (vLLM) when it exists, then ``/v1/models``, which also tells
        which models this replica serves."""
        health = await self._get(self._health_url)
        if health.status_code not in (200, 404, 405):  # 404/405: no /health here
            # vLLM answers 503 while the engine is still starting.
            raise ProbeFailed(
                f"/health answered {health.status_code}", starting=health.status_code == 503
            )
        listing = await self._get(self._models_url)
        if listing.status_code != 200:
            raise ProbeFailed(
                f"/v1/models answered {listing.status_code}",
                starting=listing.status_code == 503,
            )
        try:
            data = listing.json().get("data", [])
            models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (ValueError, AttributeError):
            raise ProbeFailed("/v1/models did not answer an OpenAI model list") from None
        self.models, self.model_ids = models, frozenset(m["id"] for m in models)
        self.discovered = True

    async def _get(self, url: str) -> httpx.Response:
        try:
            return await resend_if_dropped(lambda: self._http.get(url, headers=self._headers))
        except httpx.ConnectError as exc:
            raise ProbeFailed(f"connection refused: {exc}", starting=True) from exc
        except httpx.TransportError as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
