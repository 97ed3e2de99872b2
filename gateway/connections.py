"""Connections before they are requests: deadlines and caps uvicorn does not have.

uvicorn (0.54, httptools) arms no timer while a request's line and headers
arrive: a client that opens a connection and sends nothing, or a header byte
a second, holds it for as long as it likes, and enough such clients run the
process out of file descriptors (slowloris). The ASGI app cannot help, since
it only sees a request once its headers are complete. So the gateway serves
HTTP with a small subclass of uvicorn's own httptools protocol that adds:

- **a header deadline**: the request line and headers must have fully arrived
  ``header_timeout_s`` after the connection opened (for its first request) or
  after the request's first byte (for later ones on a keep-alive connection;
  the idle time before that byte is uvicorn's keep-alive timeout). A partial
  request then gets 408 in OpenAI's envelope with ``Connection: close``; a
  connection that sent nothing is closed without an answer (what Apache's
  mod_reqtimeout does: there is no request to answer);
- **a cap on the header block** (``max_header_bytes``): 431 beyond it, since
  httptools would buffer a header of any length in memory. Counted twice over,
  since neither count alone sees every head: the bytes each read adds while a
  head is incomplete (what httptools holds for a header not yet ended), and
  what the parser found in the head (its URL, each header's name and value),
  which sees a head that arrives whole in one read;
- **a cap on open connections** (``max_connections``): when one more opens,
  the connection that has waited longest without a request in flight (slow
  headers, or an idle keep-alive) is closed to make room, so a flood of
  silent connections ages out instead of locking out clients that send their
  requests at once. Only when every connection has a request in flight is the
  new one refused;
- **a deadline for a body answered early** (``header_timeout_s`` again): an
  app that answers before it has read the whole body (a refused key, a probe
  sent a body) leaves the rest unread, and uvicorn then waits for it with no
  timer at all (each byte that arrives cancels its keep-alive timeout), so a
  client dripping a chunked body held the connection for ever. The rest must
  now arrive within that time, or the connection is closed; meanwhile it
  counts as waiting, so the cap can close it too;
- **a send deadline** (``send_timeout_s``): once the answer fills the
  connection's buffers, the client must read enough of it to drain them
  within that time, or the connection is dropped (aborted: what is buffered
  for it is discarded). Without it a client that asks for a long stream and
  never reads holds a concurrency slot, an upstream connection and the
  generation behind it for ever; uvicorn's flow control only makes the app
  wait;
- its malformed-request answer in OpenAI's envelope instead of uvicorn's
  plain-text 400.

Everything else (parsing, pipelining, flow control, keep-alive) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import OrderedDict
from typing import ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("gateway.connections")

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_TYPES = {400: "invalid_request_error", 408: "invalid_request_error", 431: "invalid_request_error"}


def error_response(status: int, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer in OpenAI's envelope that closes the connection."""
    error = {"message": message, "type": _TYPES[status], "param": None, "code": code}
    body = json.dumps({"error": error})
    head = (
        f"HTTP/1.1 {status} ".encode() + _REASONS[status] + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body.encode()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and caps above.

    The limits are class attributes because uvicorn builds one instance per
    connection from the class alone; :func:`guarded_protocol` makes a subclass
    that carries a configuration's values.
    """

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 2048
    send_timeout_s: float = 60.0
    # The connections without a request in flight, longest waiting first: the
    # candidates to close at the cap, found in O(1) however many are open (a
    # scan of them all on every accept would make a flood cost CPU too). One
    # per class that guarded_protocol makes, i.e. per server; entries that have
    # since got a request are skipped when met.
    waiting: ClassVar[OrderedDict[GuardedHttpToolsProtocol, None]]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Per-connection state, set here rather than in __init__ so that the
        # signature uvicorn calls stays its own.
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None  # answered, body unfinished
        self._header_bytes = 0  # bytes read while the head is incomplete
        self._head_parsed = 0  # the head's size as the parser found it
        self._head_refused = False  # 431 sent: the rest of what was read is ignored
        self._in_headers = True  # waiting for a request line and headers
        self._begun = False  # some byte of the current request arrived
        self._arm_header_deadline()
        self._make_room()
        self.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        self._cancel_header_deadline()
        self._cancel_send_deadline()
        self._cancel_drain_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Checked after feeding, since one read may hold the end of the headers
        # and then the body; a read is bounded (the transport's buffer), so a
        # header block grows to max_header_bytes plus one read at most. A head
        # that ends in this read was reset to 0 here: the parser's count
        # (_count_head) is what refuses that one.
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._begun = True
        self._head_parsed = 0
        if self._header_timer is None:  # a later request: its deadline starts now
            self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        if self._head_refused:
            return
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_refused:
            return  # a refused head's headers are not kept
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF

    def on_headers_complete(self) -> None:
        if self._head_refused:
            return  # refused: no request cycle, the app never sees it
        self.waiting.pop(self, None)
        self._cancel_header_deadline()
        self._in_headers = False
        self._header_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._head_refused:  # else: the body of a request that has no cycle
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_refused:
            return
        super().on_message_complete()
        self._in_headers = True
        self._begun = False
        self._cancel_drain_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if not self._in_headers:  # answered before the request's body ended
            self._drain_timer = self.loop.call_later(self.header_timeout_s, self._body_abandoned)
        self.waiting[self] = None
        self.waiting.move_to_end(self)

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed HTTP request", "invalid_http_request")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._not_reading)

    def resume_writing(self) -> None:
        self._cancel_send_deadline()
        super().resume_writing()

    # The cap on the head.

    def _count_head(self, size: int) -> None:
        # The parser's count sees a head that arrived whole in one read, which
        # the per-read count cannot (the head is complete, and reset, by the
        # time that read is checked). The request line's method and version
        # and optional spaces are not counted: a few bytes either way.
        self._head_parsed += size
        if self._head_parsed > self.max_header_bytes:
            self._head_too_large()

    def _head_too_large(self) -> None:
        # The parser goes on with what is left of this read (httptools cannot be
        # stopped from a callback without it reporting a parse error); the
        # callbacks above ignore it, and the connection is closing.
        self._head_refused = True
        self._refuse(
            431,
            f"the request line and headers exceed {self.max_header_bytes} bytes",
            "request_headers_too_large",
        )

    # The deadlines.

    def _cancel_send_deadline(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _not_reading(self) -> None:
        self._send_timer = None
        logger.info("connection dropped: its answer unread for %g s", self.send_timeout_s)
        # abort, not close: close waits to flush a buffer this client will not read.
        # connection_lost follows, which tells the app the client is gone.
        self.transport.abort()

    def _cancel_drain_deadline(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _body_abandoned(self) -> None:
        self._drain_timer = None
        logger.info(
            "connection closed: the rest of an answered request's body did not arrive within %g s",
            self.header_timeout_s,
        )
        self.transport.close()  # the answer is out already: nothing more to say

    def _arm_header_deadline(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._serving():
            # A pipelined request is late while an earlier one is answered:
            # writing now would cut into that answer, so end after it instead.
            self.cycle.keep_alive = False
            return
        if self._begun:
            self._refuse(
                408,
                f"the request headers did not arrive within {self.header_timeout_s:g} s",
                "request_timeout",
            )
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, code: str) -> None:
        if self.transport.is_closing():
            return
        self._cancel_header_deadline()
        cycle = self.cycle
        if self._serving():
            if cycle.response_started:  # never write into an answer being sent
                self.transport.close()
                return
            # The app has the request (a broken chunked body is found while it
            # reads): it now reads a disconnect, and what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(error_response(status, message, code))
        self.transport.close()

    def _serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    # The cap on connections.

    def _evictable(self) -> bool:
        waiting = self._in_headers or self._drain_timer is not None
        return waiting and not self._serving() and not self.transport.is_closing()

    def _make_room(self) -> None:
        if len(self.connections) <= self.max_connections:
            return
        while self.waiting:
            oldest, _ = self.waiting.popitem(last=False)
            if oldest._evictable():
                if oldest._begun and oldest._drain_timer is None:
                    oldest._refuse(
                        408, "closed to make room for a new connection", "request_timeout"
                    )
                else:
                    oldest.transport.close()
                return
        logger.warning("connection refused: %d open, all serving", len(self.connections))
        self.transport.close()


# Descriptors beyond client connections: upstream and embedder pools, the
# outbox and registry databases, Qdrant Edge's segment files, logs.
FD_HEADROOM = 512


def make_fd_room(max_connections: int) -> int:
    """Raise the soft open-file limit towards the hard one so that
    ``max_connections`` clients fit; returns the soft limit now in force.

    A common default soft limit is 1024: past it ``accept`` fails (EMFILE) and
    the event loop stops accepting for a second at a time, for everyone.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "open-file limit %d is below GATEWAY_MAX_CONNECTIONS=%d plus %d; lower the "
            "setting or raise the limit (ulimit -n)",
            soft,
            max_connections,
            FD_HEADROOM,
        )
    return soft


def guarded_protocol(
    *,
    header_timeout_s: float,
    max_header_bytes: int,
    max_connections: int,
    send_timeout_s: float = 60.0,
) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "max_connections": max_connections,
            "send_timeout_s": send_timeout_s,
            "waiting": OrderedDict(),
        },
    )
