"""The HTTP client for LLM upstreams: aiohttp behind a small surface of our own.

Every chat request crosses this client, so its cost per request is the
gateway's floor. httpx (the gateway's other clients, which carry a request
now and then, use it) spends several times aiohttp's CPU per request here,
most of it in httpcore's pool and anyio's locks and cancel scopes, and it was
the largest part of the gateway's profile (the figures:
bench/results/http_clients.md). So the LLM path uses aiohttp, and only this
module sees it: callers get a ``Reply`` and this module's exceptions.

Choices that differ from aiohttp's defaults, all to match what the gateway
did with httpx:

- no redirects followed, no cookies kept (an upstream's cookie must never
  reach the next user's request);
- proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``)
  honoured, looked up once per URL: aiohttp's own ``trust_env`` reads the
  environment, and ``~/.netrc`` on a worker thread, on every request, which
  multiplies its CPU per request (bench/results/http_clients.md);
- idle connections dropped after ``KEEPALIVE_EXPIRY_S`` (gateway.keepalive),
  and a request whose pooled connection the server had just closed sent once
  more on a fresh one;
- compressed bodies decoded;
- a body read whole is capped (``max_body_bytes``): the upstream may be a third
  party's, and one answer must not be able to take the gateway's memory.
"""

from __future__ import annotations

import contextlib
import errno
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Self

import aiohttp

from gateway.keepalive import KEEPALIVE_EXPIRY_S, resend_if_dropped

Timeouts = aiohttp.ClientTimeout
# The methods aiohttp itself sends once more when a reused connection drops
# (aiohttp.client.IDEMPOTENT_METHODS); the others, POST above all, are ours to resend.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def timeouts_for(read_s: float, connect_s: float) -> Timeouts:
    """``read_s`` bounds each wait for bytes (the headers, every chunk after them);
    ``connect_s`` the TCP connect."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s)


class TransportError(Exception):
    """The request or its answer failed below HTTP: no usable status or body."""


class ConnectFailed(TransportError):
    """Nothing accepted the connection (refused, or the name does not resolve)."""


class TimedOut(TransportError):
    """No connection, or no bytes, within the timeout."""


class Disconnected(TransportError):
    """The server closed the connection before answering."""


class ConnectTimedOut(TimedOut):
    """No connection within the connect timeout: the request was never sent."""


class BodyTooLarge(TransportError):
    """The answer's body is larger than this client holds (``max_body_bytes``)."""


def _translate(exc: aiohttp.ClientError) -> TransportError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimedOut(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # a read timeout: the request was sent
        return TimedOut(str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(str(exc))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Disconnected(str(exc) or "server disconnected")
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET:
        # A reset is a close too: a server killed with bytes of ours unread resets
        # the connection instead of closing it; it died, and its work with it.
        return Disconnected(str(exc) or "connection reset by the server")
    # malformed answers, cut-off bodies, bad encodings
    return TransportError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        raise _translate(exc) from exc


def _received_unread(content: aiohttp.StreamReader) -> bytes:
    """The bytes ``content`` holds that nobody has read yet.

    aiohttp's readers raise a body's failure before they hand over what had
    arrived ahead of it (``StreamReader.readany`` checks for the error first),
    so the last tokens of an upstream that died mid-stream would be lost if
    they came in together with its death. This reads them past the error,
    through aiohttp's private buffer (aiohttp is pinned; a test covers it).
    """
    return content._read_nowait(-1) if content._buffer else b""


class Reply:
    """An answer whose status and headers are in; the body is read on demand,
    whole (``aread``, at most ``max_body_bytes`` of it) or as it arrives."""

    __slots__ = (
        "__weakref__", "_body", "_max_body_bytes", "_peeked", "_response", "headers",
        "status_code",
    )  # fmt: skip

    def __init__(self, response: aiohttp.ClientResponse, max_body_bytes: int | None = None) -> None:
        self._response = response
        self._max_body_bytes = max_body_bytes
        # What aread found, kept: a caller may read the body again (the relay after
        # the context-overflow check), and a body found too large stays too large.
        self._body: bytes | BodyTooLarge | None = None
        # What ``peek`` read first (or how that read failed), for ``aiter_bytes`` to give.
        self._peeked: bytes | TransportError | None = None
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def aread(self) -> bytes:
        """The whole body, decoded; ``BodyTooLarge`` as soon as more than
        ``max_body_bytes`` arrived (counted decoded, so a compressed body cannot
        slip by), having held no more than that and one chunk."""
        if self._body is None:
            try:
                self._body = await self._read_whole()
            except BodyTooLarge as exc:
                self._body = exc
        if isinstance(self._body, BodyTooLarge):
            raise self._body
        return self._body

    async def _read_whole(self) -> bytes:
        limit = self._max_body_bytes
        if limit is None:
            with _translated():
                return await self._response.read()
        parts: list[bytes] = []
        size = 0
        content = self._response.content
        with _translated():
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"the body exceeds {limit} bytes")
                parts.append(chunk)
        return b"".join(parts)

    async def peek(self) -> bytes:
        """The body's first bytes, once they arrive (b"": it ended without any);
        ``aiter_bytes`` still yields them first. A read that fails raises here,
        and again from ``aiter_bytes``."""
        if self._peeked is None:
            try:
                with _translated():
                    self._peeked = await self._response.content.readany()
            except TransportError as exc:
                self._peeked = exc
        if isinstance(self._peeked, TransportError):
            raise self._peeked
        return self._peeked

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded; if it breaks off, all that arrived
        before the break, then the error."""
        if self._peeked is not None:
            peeked, self._peeked = self._peeked, None
            if isinstance(peeked, TransportError):
                raise peeked
            if not peeked:
                return
            yield peeked
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientError as exc:
                if unread := _received_unread(content):
                    yield unread
                raise _translate(exc) from exc
            if not chunk:
                return
            yield chunk

    @property
    def closed(self) -> bool:
        return bool(self._response.closed)

    async def aclose(self) -> None:
        # Back to the pool when the body was read to its end, else closed.
        self._response.release()

    def abort(self) -> None:
        """Close the connection now: a read waiting on the body raises ``Disconnected``."""
        self._response.close()


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``, as urllib (and httpx) read it."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class UpstreamHTTP:
    """A pool of connections to the LLM upstreams. Create it inside the event loop."""

    def __init__(self, *, max_connections: int = 1000, max_body_bytes: int | None = None) -> None:
        """``max_body_bytes`` caps what ``Reply.aread`` holds of one answer
        (None: no cap); a stream read as it arrives is not capped here."""
        self._max_body_bytes = max_body_bytes
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=KEEPALIVE_EXPIRY_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        # By scheme and host: the proxy depends on nothing else, and a passthrough's
        # path and query are the client's (a cache by URL would grow with them).
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def aclose(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        body: bytes | None = None,
    ) -> Reply:
        """Send, and return once the status and headers are in."""
        if method in IDEMPOTENT:
            return await self._send(method, url, headers, timeouts, body)
        return await resend_if_dropped(
            lambda: self._send(method, url, headers, timeouts, body), Disconnected
        )

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        body: bytes | None,
    ) -> Reply:
        parts = urllib.parse.urlsplit(url)
        origin = (parts.scheme, parts.netloc)
        try:
            proxy = self._proxies[origin]
        except KeyError:
            proxy = self._proxies[origin] = proxy_for(url)
        with _translated():
            response = await self._session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=timeouts,
                allow_redirects=False,
                proxy=proxy,
            )
        return Reply(response, self._max_body_bytes)
