"""A stand-in for vLLM in tests and benchmarks: a tiny OpenAI-protocol server with fault injection.

    python -m tests.fakes.llm_server --port N [--host H] [--model M] [--startup-delay SECONDS]

Sleeps --startup-delay seconds before binding (connections refused meanwhile, like vLLM loading a
model), then prints "READY <port>" (--port 0 picks a free port). Endpoints:

    GET  /health, /v1/models        200, or the status behavior.health_status says
    POST /v1/chat/completions       replies "echo: <last user text>", as JSON or an SSE stream
    POST /v1/completions, /v1/responses, /v1/messages
                                    the same echo on the Completions, Responses and Anthropic
                                    Messages APIs, shaped as vLLM answers them (llm_protocols)
    GET  /v1/responses/{id}, POST /v1/responses/{id}/cancel
                                    a response made here (404 for any other id)
    POST /v1/embeddings, /v1/messages/count_tokens, /tokenize, /v1/audio/transcriptions
                                    small deterministic answers (transcriptions: multipart in,
                                    JSON or, with response_format=text, text/plain out)
    GET|DELETE /_control/requests   the requests received, {"path", "body", "headers"}, in order
    GET|POST   /_control/behavior   fault injection; the posted object replaces the current one
    GET  /_control/stats            {"chat_requests": N, "disconnects": M} (N: generations, any API)
    POST /_control/reset            behavior, recorded requests and stats back to the start

Behavior fields, all optional. mode: normal | fail (answer `status`, default 503, with an OpenAI
error envelope, plus Retry-After if `retry_after`) | stall (streams: the first event, then
nothing; otherwise nothing) | die_mid_stream (streams: `chunks_before_death` events, default 2,
then os._exit(1); otherwise exit at once) | die (exit on the next chat request) | slow (sleep
`delay_s` before each stream event or the whole answer). `reply` replaces the echo; `times` limits
the behavior to the next N chat requests; `health_status` applies to /health and /v1/models.
mode raw answers any generating request (stream or not) with `status` (default 200), `body` (a
string) and `content_type` (default application/json) exactly: an upstream that answers a
stream request with a page, or a 200 that is no completion.
A client abandoning a stalled or slow answer cancels it and counts in "disconnects".

A raw asyncio HTTP/1.1 server (keep-alive; Content-Length or chunked request bodies) rather than
uvicorn + starlette: one parse, one json.dumps and one write per answer, since it also plays the
infinitely fast upstream of benchmarks on a 2-core box. TCP_NODELAY is set on accepted sockets
(asyncio does too), so slow-mode streams, written event by event, never wait ~40 ms on Nagle and
delayed ACKs. Measured on the dev box, one keep-alive connection, p50 per request: ~100 us from a
raw socket client (uvicorn + starlette: ~335 us), ~0.55 ms via httpx, ~1.4 ms via the openai SDK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from tests.fakes import llm_protocols as api

Json = api.Json
dumps = api.dumps
Pending = Coroutine[Any, Any, None]
MODES = {"normal", "fail", "stall", "die_mid_stream", "die", "slow", "raw"}
NUMBERS = {"status", "retry_after", "delay_s", "chunks_before_death", "times", "health_status"}
FIELDS = NUMBERS | {"mode", "reply", "body", "content_type"}
PHRASES = {s.value: s.phrase for s in HTTPStatus}
# The generating endpoints: the conversation a request amounts to, and the answer's shape.
GENERATORS = {
    "/v1/chat/completions": (api.chat_turn, api.chat_answer),
    "/v1/completions": (api.completions_turn, api.completions_answer),
    "/v1/responses": (api.responses_turn, api.responses_answer),
    "/v1/messages": (api.messages_turn, api.messages_answer),
}
RESPONSE_BY_ID = re.compile(r"^/v1/responses/([^/]+)(/cancel)?$")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    close: bool  # answer, then close the connection


def error_body(status: int, message: str, path: str = "") -> Json:
    kind = "invalid_request_error" if status < 500 else "server_error"
    kind = "rate_limit_error" if status == 429 else kind
    if path.startswith("/v1/messages"):  # vLLM answers Anthropic's envelope there
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": status}}


def head(status: int, ctype: str, length: int | None, extra: list[tuple[str, str]]) -> bytes:
    phrase = PHRASES.get(status, "Unknown")
    size = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    lines = [f"HTTP/1.1 {status} {phrase}", f"content-type: {ctype}", size]
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> bytes:
    data = dumps(obj)
    return head(status, "application/json", len(data), extra or []) + data


def frame(data: bytes) -> bytes:
    """One chunk of a chunked transfer-encoded body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def parse_behavior(raw: Any) -> Json:
    if not isinstance(raw, dict):
        raise HttpError(400, "behavior must be a JSON object")
    if unknown := sorted(set(raw) - FIELDS):
        raise HttpError(400, f"unknown behavior fields: {unknown}")
    if raw.get("mode", "normal") not in MODES:
        raise HttpError(400, f"mode must be one of {sorted(MODES)}")
    if wrong := sorted(k for k in NUMBERS & set(raw) if not isinstance(raw[k], int | float)):
        raise HttpError(400, f"must be numbers: {wrong}")
    return raw


class FakeLLM:
    """The server's state and request handling; one per process."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.behavior: Json = {}
        self.requests: list[Json] = []
        self.responses: dict[str, Json] = {}  # made by /v1/responses, for GET and cancel
        self.chat_requests = self.disconnects = self.ids = 0

    def take_behavior(self) -> Json:
        """The behavior for this chat request, counting down `times`."""
        b = self.behavior
        if "times" in b:
            left = int(b["times"]) - 1
            keep = {"health_status": b["health_status"]} if "health_status" in b else {}
            self.behavior = {**b, "times": left} if left > 0 else keep
            return b if left >= 0 else keep
        return b

    def handle(self, conn: Conn, req: Request) -> Pending | None:
        """Answer `req` on `conn` now, or return a coroutine that will (slow and stall modes)."""
        health = int(self.behavior.get("health_status", 200))
        unready = error_body(health, "not ready")
        by_id = RESPONSE_BY_ID.match(req.path)
        match req.method, req.path:
            case "POST", path if path in GENERATORS:
                return self.generate(conn, req)
            case ("GET", _) | ("POST", _) if by_id and (req.method == "POST") == bool(by_id[2]):
                self.stored_response(conn, by_id[1], cancel=bool(by_id[2]))
            case "POST", "/v1/embeddings":
                conn.send(200, api.embeddings(self.record(req), self.model))
            case "POST", "/v1/messages/count_tokens":
                conn.send(200, api.count_tokens(self.record(req)))
            case "POST", "/tokenize":
                conn.send(200, api.tokenize(self.record(req)))
            case "POST", "/v1/audio/transcriptions":
                self.transcribe(conn, req)
            case "GET", "/health":
                conn.send(health, {} if health == 200 else unready)
            case "GET", "/v1/models":
                card = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
                conn.send(health, {"object": "list", "data": [card]} if health == 200 else unready)
            case "GET", "/_control/requests":
                conn.send(200, {"requests": self.requests})
            case "DELETE", "/_control/requests":
                self.requests.clear()
                conn.send(200, {})
            case "GET", "/_control/behavior":
                conn.send(200, self.behavior)
            case "POST", "/_control/behavior":
                self.behavior = parse_behavior(json.loads(req.body or b"{}"))
                conn.send(200, self.behavior)
            case "GET", "/_control/stats":
                stats = {"chat_requests": self.chat_requests, "disconnects": self.disconnects}
                conn.send(200, stats)
            case "POST", "/_control/reset":
                self.reset()
                conn.send(200, {})
            case _:
                raise HttpError(404, f"no route for {req.method} {req.path}")
        return None

    def record(self, req: Request, body: Any = None) -> Json:
        """The request's JSON body (or ``body``), noted in the request log."""
        if body is None:
            body = json.loads(req.body)
            if not isinstance(body, dict):
                raise HttpError(400, "the body must be a JSON object")
        self.requests.append({"path": req.path, "body": body, "headers": req.headers})
        return body

    def generate(self, conn: Conn, req: Request) -> Pending | None:
        turn_of, answer = GENERATORS[req.path]
        body = json.loads(req.body)
        try:
            turn = turn_of(body) if isinstance(body, dict) else turn_of({})
        except api.BadRequest as e:
            raise HttpError(400, str(e)) from None
        self.record(req, body)
        self.chat_requests += 1
        b = self.take_behavior()
        mode, stream = b.get("mode", "normal"), body.get("stream") is True
        if mode == "die" or (mode == "die_mid_stream" and not stream):
            os._exit(1)
        if mode == "fail":
            status = int(b.get("status", 503))
            extra = [("retry-after", str(b["retry_after"]))] if "retry_after" in b else []
            conn.send(status, error_body(status, "fake-llm: injected failure", req.path), extra)
            return None
        if mode == "raw":
            data = str(b.get("body", "")).encode()
            ctype = str(b.get("content_type", "application/json"))
            conn.transport.write(head(int(b.get("status", 200)), ctype, len(data), []) + data)
            return None

        users = [api.text_of(m.get("content")) for m in turn if m.get("role") == "user"]
        reply = str(b["reply"]) if "reply" in b else "echo: " + (users[-1] if users else "")
        prompt, completion = api.words(turn), len(reply.split())
        usage = dict(prompt_tokens=prompt, completion_tokens=completion)
        usage["total_tokens"] = prompt + completion
        self.ids += 1
        base = {"id": f"chatcmpl-fake{self.ids}", "created": int(time.time())}
        base["model"] = str(body.get("model", self.model))
        if req.path == "/v1/responses":
            made = api.responses_answer(base, reply, usage, False, body)
            self.responses[made["id"]] = made
        if stream:  # parts: the head with the first event, the other events, the end
            parts = [frame(e) for e in answer(base, reply, usage, True, body)]
            sse = head(200, "text/event-stream", None, [("cache-control", "no-cache")])
            parts[0] = sse + parts[0]
            parts[-1] += b"0\r\n\r\n"
        else:
            parts = [json_response(200, answer(base, reply, usage, False, body))]

        if mode == "die_mid_stream":
            conn.transport.write(b"".join(parts[: int(b.get("chunks_before_death", 2))]))
            os._exit(1)
        if mode == "stall":
            return stall(conn, parts[0] if stream else b"")
        if mode == "slow":
            return slow(conn, parts, float(b.get("delay_s", 0.0)))
        conn.transport.write(b"".join(parts))
        return None

    def stored_response(self, conn: Conn, response_id: str, *, cancel: bool) -> None:
        self.requests.append({"path": conn_path(response_id, cancel), "body": None})
        if response_id not in self.responses:
            raise HttpError(404, f"Response with id '{response_id}' not found.")
        if cancel:
            self.responses[response_id] = {**self.responses[response_id], "status": "cancelled"}
        conn.send(200, self.responses[response_id])

    def transcribe(self, conn: Conn, req: Request) -> None:
        try:
            form = api.form_fields(req.body, req.headers.get("content-type", ""))
        except api.BadRequest as e:
            raise HttpError(400, str(e)) from None
        fields = {k: v.decode("latin-1") for k, v in form.items() if k != "file"}
        self.record(req, {**fields, "file_bytes": len(form.get("file", b""))})
        text = f"transcript of {len(form.get('file', b''))} bytes"
        if fields.get("response_format") == "text":
            data = text.encode()
            conn.transport.write(head(200, "text/plain; charset=utf-8", len(data), []) + data)
        else:
            conn.send(200, {"text": text})


def conn_path(response_id: str, cancel: bool) -> str:
    return f"/v1/responses/{response_id}" + ("/cancel" if cancel else "")


async def stall(conn: Conn, first: bytes) -> None:
    conn.transport.write(first)
    await asyncio.get_running_loop().create_future()  # forever, until the client goes away


async def slow(conn: Conn, parts: list[bytes], delay_s: float) -> None:
    for part in parts:
        await asyncio.sleep(delay_s)
        conn.transport.write(part)


class Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: requests are parsed and answered one at a time."""

    transport: asyncio.Transport

    def __init__(self, app: FakeLLM) -> None:
        self.app = app
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None  # a slow or stalled answer in progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None and not self.task.done():
            self.app.disconnects += 1  # the client abandoned a stalled or slow answer
            self.task.cancel()

    def send(self, status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> None:
        self.transport.write(json_response(status, obj, extra))

    def process(self) -> None:
        while self.task is None and not self.transport.is_closing():
            try:
                if (req := self.parse()) is None:
                    return
            except ValueError:
                self.send(400, error_body(400, "malformed HTTP request"), [("connection", "close")])
                self.transport.close()
                return
            try:
                pending = self.app.handle(self, req)
            except HttpError as e:
                self.send(e.status, error_body(e.status, str(e), req.path))
                pending = None
            except ValueError as e:  # bad JSON
                self.send(400, error_body(400, f"bad request body: {e}"))
                pending = None
            if pending is not None:
                self.task = asyncio.get_running_loop().create_task(self.finish(pending, req.close))
            elif req.close:
                self.transport.close()

    async def finish(self, pending: Pending, close: bool) -> None:
        try:
            await pending
        except Exception:
            self.transport.close()
            raise
        self.task = None
        if close:
            self.transport.close()
        else:
            self.process()

    def parse(self) -> Request | None:
        """The next complete request, taken out of the buffer, or None while incomplete."""
        buf = self.buf
        if (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > 65536:
                raise ValueError("headers too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body, stop, pos = bytearray(), -1, end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while (eol := buf.find(b"\r\n", pos)) >= 0:
                size = int(buf[pos:eol].split(b";")[0], 16)
                if size == 0:  # then optional trailers, and an empty line
                    stop = buf.find(b"\r\n\r\n", eol)
                    stop = stop + 4 if stop >= 0 else -1
                    break
                if len(buf) < eol + size + 4:
                    break
                body += buf[eol + 2 : eol + 2 + size]
                pos = eol + size + 4
        elif len(buf) >= pos + (length := int(headers.get("content-length") or 0)):
            stop, body = pos + length, buf[pos : pos + length]
        if stop < 0:
            return None
        request_body = bytes(body)
        del self.buf[:stop]
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        return Request(method, target.partition("?")[0], headers, request_body, close)


async def serve(host: str, port: int, model: str) -> None:
    app = FakeLLM(model)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(app), host, port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for vLLM, for tests.")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds before binding")
    args = parser.parse_args(argv)
    time.sleep(args.startup_delay)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.model))


if __name__ == "__main__":
    main()
