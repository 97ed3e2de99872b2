"""One LLM upstream: an OpenAI-compatible server (vLLM, or a cloud API)."""

from __future__ import annotations

import httpx

from gateway.monitor import Monitor, ProbeFailed
from gateway.upstream.breaker import CircuitBreaker


def service_root(base_url: str) -> str:
    """vLLM serves ``/health`` at its root, beside ``/v1``."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


class Upstream:
    def __init__(
        self,
        name: str,
        base_url: str,
        http: httpx.AsyncClient,
        *,
        api_key: str | None = None,
        model: str | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        # The model name to send instead of the client's (a cloud fallback has its own).
        self.model = model
        self.breaker = breaker or CircuitBreaker()
        self._http = http
        self._chat_url = f"{base_url}/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._health_urls = [f"{service_root(base_url)}/health", f"{base_url}/models"]
        self.monitor: Monitor | None = None

    @property
    def healthy(self) -> bool:
        return self.monitor is None or self.monitor.healthy

    async def send_chat(
        self, body: bytes, *, request_id: str | None, timeouts: httpx.Timeout
    ) -> httpx.Response:
        """Send a chat request and return once the response headers are in."""
        headers = dict(self._headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        request = self._http.build_request(
            "POST", self._chat_url, content=body, headers=headers, timeout=timeouts
        )
        return await self._http.send(request, stream=True)

    async def get_models(self) -> httpx.Response:
        return await self._http.get(f"{self.base_url}/models", headers=self._headers)

    async def probe(self) -> None:
        """``/health`` (vLLM), else ``/v1/models`` (any OpenAI-compatible API)."""
        for url in self._health_urls:
            try:
                response = await self._http.get(url, headers=self._headers)
            except httpx.ConnectError as exc:
                raise ProbeFailed(f"connection refused: {exc}", starting=True) from exc
            except httpx.TransportError as exc:
                raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
            if response.status_code == 200:
                return
            if response.status_code in (404, 405):
                continue  # no /health here: ask /v1/models instead
            # vLLM answers 503 while the engine is still starting.
            raise ProbeFailed(
                f"{url} answered {response.status_code}",
                starting=response.status_code == 503,
            )
        raise ProbeFailed("neither /health nor /v1/models answered 200")
