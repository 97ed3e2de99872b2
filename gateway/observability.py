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
itself. Requests no route matched (404s) share the label value ``unmatched``,
and unknown HTTP methods the value ``other``.
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
# Some servers (h11) accept any token as a method: anything else is one label value.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "other"


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
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            metrics.http_requests.labels(template, method, str(status)).inc()
            metrics.http_duration.labels(template, method).observe(elapsed)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                _log_access(method, template, status, elapsed)
            # After an exception the id stays set: the error handler outside this
            # middleware (Starlette's ServerErrorMiddleware) logs the failure, and its
            # line should carry the id too. Each request runs in its own task, so the
            # id cannot leak into another request.
            if not failed:
                request_id_var.reset(token)


def _log_access(method: str, route: str, status: int, elapsed_s: float) -> None:
    """One INFO line; the dict's keys become record attributes JsonFormatter writes out.

    The record is made and handled directly: ``Logger.info`` would also walk the
    stack for the caller's file and line, which the JSON lines do not use.
    """
    fields = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(elapsed_s * 1000, 3),
    }
    record = access_logger.makeRecord(
        access_logger.name, logging.INFO, "", 0, "%s %s %d", (method, route, status), None,
        extra=fields,
    )  # fmt: skip
    access_logger.handle(record)
