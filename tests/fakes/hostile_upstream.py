"""A hostile LLM upstream: answers each chat request with exactly the bytes a test chooses.

    with HostileUpstream() as upstream:            # listens on a free port, in a thread
        upstream.script = Script((Step(b"HTTP/1.1 200 OK\\r\\n"), Step(b"garbage", 0.1)), "reset")
        ... point a gateway at upstream.url and send it chat requests ...

A raw asyncio socket server (no HTTP library on the answering side, so it can send anything):
each ``POST /v1/chat/completions`` is read in full (Content-Length), then answered by playing
the current :class:`Script`: its steps in order (each written after its delay, so a script can
trickle bytes, slowloris style), then its end: ``close`` (FIN), ``reset`` (RST, via SO_LINGER
0), ``hold`` (keep the socket open, silent, until the client gives up) or ``keep`` (stay open
for the next request on the connection). With no script, a chat request gets a well-formed
answer: a completion, or an SSE stream when the request asked for one. ``GET /health`` and
``GET /v1/models`` always answer properly, so the gateway's health monitor keeps trusting it.

It runs on an event loop in a daemon thread of the test process; ``script`` may be replaced
at any time (each request reads it once, when it arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

End = Literal["close", "reset", "hold", "keep"]
MAX_HOLD_S = 30.0
MODEL = "hostile-model"


@dataclass(frozen=True)
class Step:
    data: bytes
    delay_s: float = 0.0  # waited before writing ``data``


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...]
    end: End = "close"

    @staticmethod
    def of(raw: bytes, end: End = "close") -> Script:
        return Script((Step(raw),), end)


# -- well-formed pieces that scripts are built from ------------------------------------------


def http_head(status: int | str, headers: Sequence[tuple[str, str]]) -> bytes:
    """A status line and headers; ``status`` may be a whole custom status line (str)."""
    line = status if isinstance(status, str) else f"HTTP/1.1 {status} Whatever"
    return (line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def http_response(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    headers = [("content-type", content_type), ("content-length", str(len(body)))]
    return http_head(status, headers) + body


def chunk_frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def completion(text: str = "fine") -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def sse_event(obj: Any) -> bytes:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return b"data: " + data + b"\n\n"


def stream_chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse_body(text: str = "fine") -> bytes:
    events = [stream_chunk(piece) for piece in text.split(" ")] + [stream_chunk(finish="stop")]
    return b"".join(sse_event(e) for e in events) + sse_event(b"[DONE]")


def good_answer(stream: bool) -> bytes:
    if stream:
        body = sse_body()
        head = http_head(200, [("content-type", "text/event-stream"), ("connection", "close")])
        return head + body  # no length: the body ends when the connection closes
    return http_response(200, json.dumps(completion()).encode())


# -- the server ------------------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, path, body) of the next request, or None when the client closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" "), "", ""][:3]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return method, target.partition("?")[0], body


class HostileUpstream:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.script: Script | None = None
        self.chat_requests = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> HostileUpstream:
        self._thread.start()
        if not self._started.wait(10):
            raise TimeoutError("hostile upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> HostileUpstream:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, 0, limit=1 << 20)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                method, path, body = request
                if method == "POST" and path.endswith("/chat/completions"):
                    self.chat_requests += 1
                    if not await self._chat(reader, writer, body):
                        return
                elif method == "GET" and path in ("/health", "/v1/models"):
                    card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "hostile"}
                    answer = {"object": "list", "data": [card]} if path == "/v1/models" else {}
                    writer.write(http_response(200, json.dumps(answer).encode()))
                    await writer.drain()
                else:
                    writer.write(http_response(404, b'{"error": {"message": "no route"}}'))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _chat(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        """Play the script; True when the connection stays open for another request."""
        script = self.script
        if script is None:
            try:
                stream = json.loads(body).get("stream") is True
            except (ValueError, AttributeError):
                stream = False
            script = Script.of(good_answer(stream))
        for step in script.steps:
            if step.delay_s:
                await asyncio.sleep(step.delay_s)
            writer.write(step.data)
            await writer.drain()
        if script.end == "keep":
            return True
        if script.end == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # close with RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if script.end == "hold":  # silent until the client leaves (or a safety cap)
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(MAX_HOLD_S):
                    while await reader.read(65536):
                        pass
        writer.close()
        return False
