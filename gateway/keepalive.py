"""Reusing pooled keep-alive connections safely.

A server closes a keep-alive connection once it has been idle for its
timeout: 5 s in uvicorn, and so in vLLM and in our embedder. A client that
reuses the connection in that instant sends its request into a closing
socket and gets ``RemoteProtocolError`` ("Server disconnected without
sending a response"). Two defences:

- the gateway's pools drop idle connections sooner than the servers do
  (``KEEPALIVE_EXPIRY_S``), which closes the window for servers like ours;
- a request that still finds its connection dropped is sent once more, on a
  fresh connection, before anyone calls the server down. A server that is
  really gone fails the second send too (most often with ``ConnectError``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

KEEPALIVE_EXPIRY_S = 4.0

T = TypeVar("T")


async def resend_if_dropped(
    send: Callable[[], Awaitable[T]],
    dropped: type[Exception] = httpx.RemoteProtocolError,
) -> T:
    """``send()``, and once more if it raised ``dropped``: the pooled connection
    was closed under it (httpx's error by default; gateway.upstream.http passes its own)."""
    try:
        return await send()
    except dropped:
        return await send()  # the pool has discarded the dead connection
