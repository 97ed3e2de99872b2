"""The least a Python proxy can do per request: the floors memgate's overhead sits on.

    python -m bench.floor.proxies KIND PORT UPSTREAM_URL

KIND: ``httpcore`` (a bare ASGI app forwarding with httpcore's pool), ``httpx`` (the
same with httpx), ``aiohttp`` (the same with aiohttp, memgate's LLM client),
``fastapi`` (one FastAPI route forwarding with httpx), ``fastapi-aiohttp`` (that
route forwarding with aiohttp). Each reads
the body, POSTs it to UPSTREAM_URL/v1/chat/completions, and answers with the
upstream's body: no auth, validation, metrics, retries, logs or memory. Served by
uvicorn with uvloop and httptools when installed, as memgate is. bench/floor.py
drives them; this file is never part of the product.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import httpcore
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

Scope = dict[str, Any]
JSON = [(b"content-type", b"application/json")]


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def build(kind: str, upstream: str) -> Any:
    url = upstream.rstrip("/") + "/v1/chat/completions"
    if kind == "httpcore":
        pool = httpcore.AsyncConnectionPool(max_keepalive_connections=32)

        async def bare_httpcore(scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = await read_body(receive)
            reply = await pool.request(
                "POST", url, content=body, headers=[*JSON, (b"host", b"upstream")]
            )
            await send({"type": "http.response.start", "status": reply.status, "headers": JSON})
            await send({"type": "http.response.body", "body": reply.content})

        return bare_httpcore
    if kind in ("aiohttp", "fastapi-aiohttp"):
        return build_aiohttp(kind, url)
    client = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
    if kind == "httpx":

        async def bare_httpx(scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            body = await read_body(receive)
            reply = await client.post(url, content=body, headers=dict(JSON))
            start = {"type": "http.response.start", "status": reply.status_code, "headers": JSON}
            await send(start)
            await send({"type": "http.response.body", "body": reply.content})

        return bare_httpx
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        reply = await client.post(url, content=await request.body(), headers=dict(JSON))
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    return app


def build_aiohttp(kind: str, url: str) -> Any:
    session: aiohttp.ClientSession | None = None  # made on the first request, in the loop

    async def post(body: bytes) -> tuple[int, bytes]:
        nonlocal session
        session = session or aiohttp.ClientSession()
        async with session.post(
            url, data=body, headers={"content-type": "application/json"}
        ) as reply:
            return reply.status, await reply.read()

    if kind == "aiohttp":

        async def bare_aiohttp(scope: Scope, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            status, content = await post(await read_body(receive))
            await send({"type": "http.response.start", "status": status, "headers": JSON})
            await send({"type": "http.response.body", "body": content})

        return bare_aiohttp
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        status, content = await post(await request.body())
        return Response(content, status_code=status, media_type="application/json")

    return app


if __name__ == "__main__":
    kind, port, upstream = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uvicorn.run(build(kind, upstream), host="127.0.0.1", port=port, log_level="info",
                access_log=False)  # fmt: skip
