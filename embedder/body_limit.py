"""A cap on request bodies: 413 for one over ``EMBEDDER_MAX_BODY_BYTES``.

Every route of the service reads its whole body before it can answer (a JSON
document), so without a cap one request (a ``Content-Length`` of gigabytes,
or a chunked body that never ends) would be read into memory until the
process is killed, taking every other client's embeddings with it. The
middleware reads the body itself, up to the cap, and hands the app the bytes
read: a declared length over the cap is refused before a byte is read, and a
chunked body as soon as it passes the cap, with ``Connection: close`` (the
rest is not read, so the connection cannot be reused).

The gateway never sends more than ``PART_CHARS`` characters of text in one
request (``gateway/memory/embedder_client.py``), well under the default.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class EmbedderBodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its request was in: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "message": f"request body exceeds {self.max_bytes} bytes "
                    "(EMBEDDER_MAX_BODY_BYTES)",
                    "type": "invalid_request_error",
                    "code": "request_too_large",
                    "param": None,
                }
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent or unreadable (the read counts).
    The gateway's twin is in gateway/limits.py: the embedder ships without it."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands over ``body`` first, then the client's own
    (a disconnect, which the app watches for while it encodes)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
