"""What one request may cost: body size and the number served at once.

Plain ASGI middleware, ahead of routing. A body over the limit is refused
with 413 (from ``Content-Length`` before reading, or while reading a chunked
body); when ``max_concurrency`` requests are already being served, the next
one gets 429 with ``Retry-After`` instead of queueing without bound. Probes
and metrics are exempt, so an overloaded gateway still reports its state.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError

EXEMPT_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing lets it
    through (it turns other exceptions into a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            too_large = APIError(
                413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large"
            )
            await too_large.response()(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrency:
            busy = APIError(
                429,
                "the gateway is at its concurrency limit; retry shortly",
                code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            )
            await busy.response()(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        self.in_flight += 1
        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.in_flight -= 1
