"""Per-request bookkeeping as plain ASGI middleware (no BaseHTTPMiddleware cost).

Gives every request an id (the client's ``x-request-id`` when it is short
visible ASCII, else a new one), returns it in the response, records HTTP
metrics by route template so label values stay bounded, and writes one access
log line per request: method, route template, status, duration and request
id. Never the query string, a body or a header, which is where user ids,
message content and keys live.

The route template is what the router left in ``scope["route"]`` (FastAPI
0.165 sets the matched ``APIRoute`` there). Note that for a router included
with ``include_router(router, prefix=...)`` that route's ``path_format`` lacks
the include prefix, so gateway routers carry their prefix on the ``APIRouter``
itself. Requests no route matched (404s) share the label value ``unmatched``.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

access_logger = logging.getLogger("gateway.access")

MAX_REQUEST_ID = 128
UNMATCHED = "unmatched"
REQUEST_ID_HEADER = b"x-request-id"


def client_request_id(scope: Scope) -> str | None:
    """The client's ``x-request-id`` if usable: 1..128 visible ASCII characters."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                text: str = value.decode("ascii")
                # Visible characters only: no spaces or controls (log and header injection).
                if text.isprintable() and " " not in text:
                    return text
            return None
    return None


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched``; never the concrete path."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = client_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        status = 500  # when the app raises before answering, the outer handler answers 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        metrics = self.metrics
        metrics.http_in_flight.inc()
        failed = True
        try:
            await self.app(scope, receive, send_with_id)
            failed = False
        finally:
            elapsed = time.perf_counter() - started
            metrics.http_in_flight.dec()
            template = route_template(scope)
            method: str = scope["method"]
            metrics.http_requests.labels(template, method, str(status)).inc()
            metrics.http_duration.labels(template, method).observe(elapsed)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                # One dict per line: its keys become record attributes that
                # gateway.logs.JsonFormatter writes out (it knows these names).
                access_logger.info(
                    "%s %s %d",
                    method,
                    template,
                    status,
                    extra={
                        "method": method,
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            # After an exception the id stays set: the error handler outside this
            # middleware (Starlette's ServerErrorMiddleware) logs the failure, and its
            # line should carry the id too. Each request runs in its own task, so the
            # id cannot leak into another request.
            if not failed:
                request_id_var.reset(token)
