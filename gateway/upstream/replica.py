"""One LLM replica: an OpenAI-compatible server (vLLM, or a cloud API)."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Hashable
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
from gateway.urls import join_url, service_root

# A health check that waits longer than this has failed: a server too busy to
# answer /health in 10 s should not be sent more work.
PROBE_TIMEOUTS = timeouts_for(read_s=10.0, connect_s=2.0)
# How long "nothing listens" counts as "starting" for a server never seen up:
# vLLM opens its port only once its model is loaded, which takes minutes.
DEFAULT_START_GRACE_S = 300.0


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
        start_grace_s: float = DEFAULT_START_GRACE_S,
    ) -> None:
        self.name = name
        self.group = group or name
        self.base_url = base_url
        self.breaker = breaker or CircuitBreaker()
        # Model ids the server lists at /v1/models, refreshed by every good probe.
        self.models: list[dict[str, Any]] = []
        self.model_ids: frozenset[str] = frozenset()
        self.discovered = False
        # Learned from the server's own context-overflow errors, by model name:
        # its window; and how far the gateway's size estimate fell short, by model
        # and memory owner (whose text it was: gateway.upstream.context.learn_ratio).
        self.learned_windows: dict[str, int] = {}
        self.token_ratios: dict[tuple[str, Hashable], float] = {}
        self.start_grace_s = start_grace_s
        self.seen_up = False
        self.refused_since: float | None = None  # monotonic; None: not refusing
        # Requests sent and not answered yet (a completion's headers come when it
        # is done), and answers still being read (weak: one dropped unread must
        # not count forever).
        self._sending = 0
        self._replies: weakref.WeakSet[Reply] = weakref.WeakSet()
        self._http = http
        self._models_url = join_url(base_url, "/models")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._root = service_root(base_url)
        self._health_url = join_url(self._root, "/health")
        self.monitor: Monitor | None = None

    @property
    def healthy(self) -> bool:
        return self.monitor is None or self.monitor.healthy

    def note_refused(self) -> bool:
        """Nothing accepted a connection. True while that still counts as
        starting: the server was never seen up and has refused for less than
        ``start_grace_s``. After that, or once it had been up, it is unreachable."""
        now = time.monotonic()
        if self.refused_since is None:
            self.refused_since = now
        return not self.seen_up and now - self.refused_since < self.start_grace_s

    def note_answered(self) -> None:
        """The server answered over HTTP (whatever the status): something listens."""
        self.refused_since = None

    @property
    def refusing(self) -> bool:
        return self.refused_since is not None

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
        url = join_url(self._root if call.root else self.base_url, call.path, call.query)
        self._sending += 1
        try:
            reply = await self._http.request(
                call.method, url, body=body, headers=headers, timeouts=timeouts
            )
        finally:
            self._sending -= 1
        self._replies.add(reply)
        return reply

    @property
    def busy(self) -> bool:
        """Whether this server is working on one of our requests now."""
        return self._sending > 0 or any(not reply.closed for reply in list(self._replies))

    async def probe(self) -> None:
        """``/health`` (vLLM) when it exists, then ``/v1/models``, which also tells
        which models this replica serves.

        A server without ``/health`` that is answering one of our requests is
        not asked for ``/v1/models`` meanwhile: llama.cpp's Python server
        serves that only between completions (it takes the model's lock), and
        by default cuts the running completion off to do it. The answer in
        flight is the sign of life; the list is refreshed at the next probe.
        """
        health, _ = await self._get(self._health_url)
        if health not in (200, 404, 405):  # 404/405: no /health here
            # vLLM answers 503 while the engine is still starting.
            raise ProbeFailed(f"/health answered {health}", starting=health == 503)
        if health != 200 and self.discovered and self.busy:
            return
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
        self.seen_up = True

    async def _get(self, url: str) -> tuple[int, bytes]:
        """The status and body of a GET."""
        try:
            reply = await self._http.request(
                "GET", url, headers=self._headers, timeouts=PROBE_TIMEOUTS
            )
            self.note_answered()
            try:
                return reply.status_code, await reply.aread()
            finally:
                await reply.aclose()
        except ConnectFailed as exc:
            starting = self.note_refused()
            raise ProbeFailed(f"connection refused: {exc}", starting=starting) from exc
        except TransportError as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from exc
