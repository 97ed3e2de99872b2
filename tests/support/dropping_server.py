"""A real HTTP/1.1 server on a socket that drops reused keep-alive connections.

It answers the first request on each connection (keeping the connection
alive) and closes the connection without a word when a second request
arrives on it: what a client sees when the server's idle timeout fires just
as the client reuses the connection. ``drop_every_request`` closes at once,
before any answer: a server that is there but never answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass
class DroppingServer:
    answer: Callable[[str, Json], Json]
    drop_every_request: bool = False
    connections: int = 0
    answered: list[str] = field(default_factory=list)
    url: str = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                if served or self.drop_every_request:
                    return  # closed without an answer
                path = head.split(b" ", 2)[1].decode()
                length = _content_length(head)
                body = json.loads(await reader.readexactly(length)) if length else {}
                data = json.dumps(self.answer(path, body)).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
                self.answered.append(path)
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@asynccontextmanager
async def dropping_server(
    answer: Callable[[str, Json], Json], *, drop_every_request: bool = False
) -> AsyncIterator[DroppingServer]:
    server = DroppingServer(answer, drop_every_request)
    listener = await asyncio.start_server(server._handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server
