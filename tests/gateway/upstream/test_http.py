"""UpstreamHTTP against real sockets: proxies from the environment, no cookie
kept between requests, and aiohttp's failures as this module's own errors."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest

from gateway.upstream.http import (
    BodyTooLarge,
    ConnectFailed,
    Disconnected,
    TimedOut,
    TransportError,
    UpstreamHTTP,
    proxy_for,
    timeouts_for,
)
from harness.process import free_port

TIMEOUTS = timeouts_for(read_s=5.0, connect_s=5.0)
JSON = {"Content-Type": "application/json"}


@dataclass
class Recorder:
    """Answers every request with ``reply`` (raw bytes after the status line) and
    keeps each request's head: the request line and the headers."""

    reply: bytes = b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    heads: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.heads.append(head.decode())
                length = next(
                    (int(line.split(":")[1]) for line in head.decode().split("\r\n")
                     if line.lower().startswith("content-length:")), 0,
                )  # fmt: skip
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\n" + self.reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def recorder(reply: bytes | None = None) -> AsyncIterator[Recorder]:
    server = Recorder() if reply is None else Recorder(reply)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server


async def post(http: UpstreamHTTP, url: str) -> tuple[int, bytes]:
    reply = await http.request("POST", url, body=b"{}", headers=JSON, timeouts=TIMEOUTS)
    try:
        return reply.status_code, await reply.aread()
    finally:
        await reply.aclose()


async def test_requests_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with recorder() as proxy, UpstreamHTTP() as http:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert await post(http, "http://llm.invalid:8000/v1/chat/completions") == (200, b"{}")
        # A forward proxy is sent the absolute URL.
        assert proxy.heads[0].startswith("POST http://llm.invalid:8000/v1/chat/completions ")


async def test_no_proxy_hosts_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with recorder() as proxy, recorder() as llm, UpstreamHTTP() as http:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert await post(http, f"{llm.url}/v1/chat/completions") == (200, b"{}")
        assert proxy.heads == []
        assert llm.heads[0].startswith("POST /v1/chat/completions ")


async def test_the_proxy_is_looked_up_once_per_origin_whatever_the_path() -> None:
    # A passthrough's path and query are the client's: a cache by URL would grow with them.
    async with recorder() as llm, UpstreamHTTP() as http:
        for n in range(20):
            assert await post(http, f"{llm.url}/v1/anything/{n}?q={n}") == (200, b"{}")
        assert len(http._proxies) == 1


def test_proxy_for_reads_the_scheme_and_the_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@secure-proxy:3128")
    monkeypatch.setenv("NO_PROXY", "vllm,.internal")
    assert proxy_for("http://cloud.example/v1") == "http://proxy:3128"
    assert proxy_for("https://cloud.example/v1") == "http://user:pw@secure-proxy:3128"
    assert proxy_for("http://vllm:8000/v1") is None
    assert proxy_for("http://llm.internal:8000/v1") is None


async def test_a_cookie_an_upstream_sets_is_never_sent_back() -> None:
    reply = b"set-cookie: session=user-a\r\ncontent-length: 2\r\n\r\n{}"
    async with recorder(reply) as llm, UpstreamHTTP() as http:
        # A host name: aiohttp's default jar would ignore cookies from an IP address.
        url = llm.url.replace("127.0.0.1", "localhost") + "/v1/chat/completions"
        for _ in range(2):
            assert await post(http, url) == (200, b"{}")
        assert len(llm.heads) == 2
        assert all("cookie" not in head.lower() for head in llm.heads)


async def test_nothing_listening_is_connect_failed() -> None:
    async with UpstreamHTTP() as http:
        with pytest.raises(ConnectFailed):
            await post(http, f"http://127.0.0.1:{free_port()}/v1/chat/completions")


async def test_no_answer_within_the_read_timeout_is_timed_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        await asyncio.sleep(10)

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, UpstreamHTTP() as http:
        with pytest.raises(TimedOut):
            await http.request(
                "POST", f"http://127.0.0.1:{port}/v1", body=b"{}", headers=JSON,
                timeouts=timeouts_for(read_s=0.2, connect_s=1.0),
            )  # fmt: skip


async def test_a_connection_reset_before_the_answer_is_disconnected() -> None:
    """A server killed with our request unread resets the connection: that is the
    server going away (retried by the pool), not a broken answer (not retried)."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the rest of the request stays unread: close() resets
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    listener = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, UpstreamHTTP() as http:
        with pytest.raises(Disconnected):
            await post(http, f"http://127.0.0.1:{port}/v1/chat/completions")


async def test_a_body_cut_short_is_a_transport_error_not_a_timeout() -> None:
    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(cut_short, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, UpstreamHTTP() as http:
        reply = await http.request(
            "GET", f"http://127.0.0.1:{port}/v1", headers=JSON, timeouts=TIMEOUTS
        )
        with pytest.raises(TransportError) as raised:
            await reply.aread()
        await reply.aclose()
        assert not isinstance(raised.value, TimedOut)


async def test_what_arrived_before_a_stream_broke_off_comes_before_the_error() -> None:
    """aiohttp's readers raise a broken body's error before the bytes already
    received; a dying upstream's last events must still reach the client."""
    events = b"data: one\n\ndata: two\n\ndata: three\n\n"
    closed = asyncio.Event()

    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await closed.wait()  # the client has its Reply: now the events and the end
        writer.write(f"{len(events):x}\r\n".encode() + events + b"\r\n")
        writer.close()  # mid-body: no last chunk

    listener = await asyncio.start_server(dies, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, UpstreamHTTP() as http:
        reply = await http.request(
            "POST", f"http://127.0.0.1:{port}/v1", body=b"{}", headers=JSON, timeouts=TIMEOUTS
        )
        closed.set()
        content = reply._response.content
        if content.exception() is None:  # wait until the events and the break are both in
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async with asyncio.timeout(5):
                    await content.wait_eof()  # raises the break when it comes
        assert content.exception() is not None
        received = b""
        with pytest.raises(TransportError):
            async for chunk in reply.aiter_bytes():
                received += chunk
        await reply.aclose()
    assert received == events


async def test_a_redirect_is_answered_not_followed() -> None:
    seen: list[bytes] = []

    async def redirects(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\n"
                     b"content-length: 0\r\n\r\n")  # fmt: skip
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(redirects, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, UpstreamHTTP() as http:
        status, body = await post(http, f"http://127.0.0.1:{port}/v1/chat/completions")
    assert (status, body, len(seen)) == (307, b"", 1)


CAP = 64 * 1024


async def test_an_endless_body_is_too_large_once_past_the_cap_and_never_reused() -> None:
    """An upstream answering without end (or with 200 MB) used to be read whole
    into memory; past ``max_body_bytes`` the read stops, and the connection,
    its body unread, goes instead of back to the pool."""
    connections = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:  # until the client closes the connection
                writer.write(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
                await writer.drain()

    listener = await asyncio.start_server(endless, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/v1"
    async with listener, UpstreamHTTP(max_body_bytes=CAP) as http:
        for _ in range(2):
            reply = await http.request("GET", url, headers=JSON, timeouts=TIMEOUTS)
            try:
                with pytest.raises(BodyTooLarge):
                    await reply.aread()
                with pytest.raises(BodyTooLarge):  # read again: the same verdict
                    await reply.aread()
            finally:
                await reply.aclose()
        assert connections == 2


async def test_the_cap_counts_the_decoded_body() -> None:
    # 1 MiB of zeros compresses to about 1 kB: a compressed answer cannot slip by.
    packed = gzip.compress(b"0" * (1 << 20))
    head = f"content-encoding: gzip\r\ncontent-length: {len(packed)}\r\n\r\n".encode()
    async with recorder(head + packed) as llm, UpstreamHTTP(max_body_bytes=CAP) as http:
        with pytest.raises(BodyTooLarge):
            await post(http, llm.url)


async def test_a_body_within_the_cap_is_read_whole_and_read_again_the_same() -> None:
    body = b"y" * CAP
    reply_bytes = f"content-length: {len(body)}\r\n\r\n".encode() + body
    async with recorder(reply_bytes) as llm, UpstreamHTTP(max_body_bytes=CAP) as http:
        reply = await http.request("POST", llm.url, body=b"{}", headers=JSON, timeouts=TIMEOUTS)
        try:
            assert await reply.aread() == body
            assert await reply.aread() == body
        finally:
            await reply.aclose()
        assert await post(http, llm.url) == (200, body)
        assert len(llm.heads) == 2
