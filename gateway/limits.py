"""What one request may cost: body size, time to send it, and the number served at once.

Plain ASGI middleware, ahead of routing (and behind ``gateway.auth.KeyCheck``,
so a request without a valid key never gets this far). A body over the limit
is refused with 413 (from ``Content-Length`` before reading, or while reading
a chunked body); a body that has not fully arrived ``body_timeout_s`` after
the request began is refused with 408 and its connection closed, so a client
sending a byte a second holds its slot for that long at most; a body in a
``Content-Encoding`` other than identity (gzip, say) is refused with 415,
since nothing behind this reads a compressed body; when
``max_concurrency`` requests are already being served, the next one gets 429
with ``Retry-After`` instead of queueing without bound, and so does a
tenant's request beyond its share (``max_per_tenant``), so that one tenant
cannot take every slot. Probes and metrics are exempt, so an overloaded
gateway still reports its state.
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import PRINCIPAL_KEY
from gateway.errors import APIError

EXEMPT_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body parsing lets it
    through (it turns other exceptions into a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")


class BodyTimedOut(HTTPException):
    """Raised from ``receive`` when the body is late (an HTTPException, as above)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s",
            headers={"Connection": "close"},  # the rest of it is not worth waiting for
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _codings(scope: Scope, header: bytes) -> list[str]:
    """The codings that every ``header`` line of the request lists, in order."""
    named: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == header:
            named += value.decode("latin-1").split(",")
    return [c.strip() for c in named if c.strip()]


def content_coding(scope: Scope) -> str | None:
    """The request's ``Content-Encoding`` when it names a coding other than
    identity (``"gzip"``, ``"br, gzip"``), else None.

    Refused rather than decoded: the JSON endpoints would read gzip bytes as
    broken JSON (a misleading 400), a pass-through would forward them with a
    JSON content type and no encoding, and decoding would let a 1 MiB body
    inflate to gigabytes (a decompression bomb) past the body-size limit.
    """
    codings = _codings(scope, b"content-encoding")
    if all(c.lower() == "identity" for c in codings):
        return None
    return ", ".join(codings)[:64]


def transfer_coding(scope: Scope) -> str | None:
    """The request's ``Transfer-Encoding`` when it names a coding besides chunked
    (``"gzip, chunked"``), else None.

    httptools reads such a body as chunked and hands on what is still gzip,
    which the endpoints would call broken JSON: refused with a clear 400 instead
    (RFC 9112 lets a server refuse a transfer coding it does not implement).
    """
    codings = _codings(scope, b"transfer-encoding")
    if all(c.lower() == "chunked" for c in codings):
        return None
    return ", ".join(codings)[:64]


def undecodable_part(scope: Scope) -> str | None:
    """``"path"`` or ``"query string"`` when that part of the URL does not
    percent-decode to UTF-8 text (``?user_id=%ff``), else None.

    Starlette and uvicorn decode such bytes to U+FFFD, so ``%ff`` and ``%fe``
    would both name the user ``"\ufffd"``: a silent change of the client's id,
    refused instead, as invalid UTF-8 in a JSON body is.
    """
    for name, raw in (
        ("path", scope.get("raw_path") or b""),
        ("query string", scope.get("query_string", b"")),
    ):
        if raw.isascii() and b"%" not in raw:
            continue  # the common case: nothing to decode
        try:
            unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return name
    return None


def tenant_share(max_concurrency: int, configured: int | None, tenants: int) -> int:
    """The requests one tenant may have in flight: ``configured`` when set, else
    half the cap when there are tenants to share it with, else all of it.

    Half, not an equal split: tenants are rarely busy at once, and one tenant
    may use much of an idle gateway; what matters is that another always
    finds room.
    """
    if configured is not None:
        return min(configured, max_concurrency)
    return max(1, max_concurrency // 2) if tenants > 1 else max_concurrency


def _tenant(scope: Scope) -> str | None:
    """The tenant whose key ``KeyCheck`` accepted (None: no keys, or the admin)."""
    principal = scope.get("state", {}).get(PRINCIPAL_KEY)
    if principal is None or principal.admin:
        return None
    return str(principal.tenant)


class RequestLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_concurrency: int,
        body_timeout_s: float = 30.0,
        max_per_tenant: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.body_timeout_s = body_timeout_s
        self.max_per_tenant = max_per_tenant or max_concurrency
        self.in_flight = 0
        self.in_flight_by_tenant: dict[str, int] = {}  # only tenants with some in flight

    def _refusal(self, scope: Scope) -> APIError | None:
        """Why the request cannot be served as it came (its URL, its codings,
        its announced size), decided from the head alone; None: it can."""
        bad = undecodable_part(scope)
        if bad is not None:
            return APIError(
                400, f"the URL's {bad} is not UTF-8 once percent-decoded", code="invalid_url"
            )
        coding = content_coding(scope)
        if coding is not None:
            return APIError(
                415,
                f"request body has Content-Encoding {coding!r}; only identity "
                "(an uncompressed body) is accepted",
                code="unsupported_media_type",
                # RFC 9110 §15.5.16: a 415 for a content coding names the ones accepted.
                headers={"Accept-Encoding": "identity"},
            )
        transfer = transfer_coding(scope)
        if transfer is not None:
            return APIError(
                400,
                f"request has Transfer-Encoding {transfer!r}; only chunked is accepted",
                code="unsupported_transfer_encoding",
                headers={"Connection": "close"},  # its body is left unread
            )
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            return APIError(
                413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large"
            )
        return None

    def _busy(self, tenant_load: int) -> APIError | None:
        """The 429 for a request beyond its tenant's share or the gateway's cap."""
        if tenant_load >= self.max_per_tenant:
            reason = (
                f"this key's tenant has {tenant_load} requests in flight, its share of the "
                "gateway's concurrency"
            )
        elif self.in_flight >= self.max_concurrency:
            reason = "the gateway is at its concurrency limit"
        else:
            return None
        return APIError(
            429,
            f"{reason}; retry shortly",
            code="too_many_concurrent_requests",
            headers={"Retry-After": "1"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        tenant = _tenant(scope)
        tenant_load = self.in_flight_by_tenant.get(tenant, 0) if tenant is not None else 0
        refused = self._refusal(scope) or self._busy(tenant_load)
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        received = 0
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect: no deadline on those
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimedOut(self.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        self.in_flight += 1
        if tenant is not None:
            self.in_flight_by_tenant[tenant] = tenant_load + 1
        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.in_flight -= 1
            if tenant is not None:
                left = self.in_flight_by_tenant[tenant] - 1
                if left:
                    self.in_flight_by_tenant[tenant] = left
                else:
                    del self.in_flight_by_tenant[tenant]
