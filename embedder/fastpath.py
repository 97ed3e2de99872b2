"""``POST /v1/embeddings`` without FastAPI's routing and dependency machinery.

Every chat turn with memory waits for one embedding request (its query), and
on the embedder's one core the request's handling is serialised with the
model. FastAPI's routing, dependency solving and body validation were about a
quarter of that handling's CPU (bench/README.md, "Where the recall's time
goes"). This middleware takes a well-formed request (a JSON body that
``EmbeddingRequest`` accepts) straight to the service's handler. Anything
else (another route, another content type, a body the model refuses) goes to
the FastAPI app with its body replayed, so every error answer stays exactly
the app's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from embedder.body_limit import replay_body
from embedder.schemas import EmbeddingRequest

PATH = "/v1/embeddings"

Serve = Callable[[EmbeddingRequest, Request], Awaitable[Response]]


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


class EmbeddingsFastPath:
    def __init__(self, app: ASGIApp, serve: Serve) -> None:
        self.app = app
        self.serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == PATH
            and _is_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its request was in: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            request = EmbeddingRequest.model_validate_json(body)
        except ValidationError:
            await self.app(scope, replay_body(body, receive), send)
            return
        response = await self.serve(request, Request(scope, receive))
        await response(scope, receive, send)
