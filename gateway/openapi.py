"""What the OpenAPI document declares besides the response models: errors and raw bodies.

Nothing here edits the generated document; the routes declare it all:

- Every error is OpenAI's envelope (gateway.errors), declared per route with
  :func:`errors` for the statuses it answers. Every router behind a key adds
  :data:`KEYED` (401, 403, 429 and ``default``: any other status, such as an
  LLM upstream's client error relayed, is the envelope too). Declaring
  ``default`` is also what keeps FastAPI from adding its 422
  ``HTTPValidationError``: invalid input is a 400 here, as OpenAI answers it.
- The endpoints that read their body themselves (to forward it byte for byte)
  declare its schema with :func:`json_body`, and what they relay with
  :func:`relayed`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from gateway.exceptions import (
    GatewayError,
    NoUpstreamAvailable,
    UnknownModel,
    UpstreamBroke,
    UpstreamInvalid,
    UpstreamTimedOut,
)

Responses = dict[int | str, dict[str, Any]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, which every gateway error uses."""

    error: ErrorDetail


_WHY = {
    400: "Invalid input",
    401: "No API key, or an unknown one (when keys are configured)",
    403: "The other kind of key (the admin key on /v1, a tenant key on /admin), "
    "or the admin endpoints are off",
    404: "Not found",
    408: "The request body did not arrive in time (GATEWAY_BODY_TIMEOUT_S)",
    409: "Conflict",
    413: "The request body is larger than GATEWAY_MAX_BODY_BYTES",
    429: "Too many requests in flight (GATEWAY_MAX_CONCURRENCY, or the tenant's share of it), "
    "or the LLM's rate limit",
    502: "The LLM upstream failed",
    503: "A dependency cannot serve now; retry after ``Retry-After`` seconds",
    504: "The LLM upstream timed out",
    507: "The data dir's disk is full: the write was not accepted",
}


# A declared error: a status, one of the gateway's exceptions (its class holds
# the status, gateway.exceptions), or either with what it means on the route.
Declared = int | type[GatewayError] | tuple[int | type[GatewayError], str]


def _status_and_meaning(item: Declared) -> tuple[int, str]:
    what, why = item if isinstance(item, tuple) else (item, None)
    if isinstance(what, int):
        return what, why or _WHY[what]
    summary = (what.__doc__ or "").strip().split("\n\n")[0]
    return what.status_code, why or " ".join(summary.split())


def errors(*declared: Declared) -> Responses:
    """Error responses in OpenAI's envelope. An exception class declares its own
    status, so the document follows gateway.exceptions; several that share a
    status are described together."""
    meanings: dict[int, list[str]] = {}
    for item in declared:
        status, why = _status_and_meaning(item)
        meanings.setdefault(status, []).append(why)
    return {
        status: {"model": ErrorResponse, "description": " Or: ".join(whys)}
        for status, whys in meanings.items()
    }


# Every route behind a tenant or admin key.
KEYED: Responses = {
    **errors(401, 403, 429),
    "default": {"model": ErrorResponse, "description": "Any other error"},
}


_JSON = b"application/json"


class JSONBodyRoute(APIRoute):
    """A route whose body is read as JSON whatever its ``Content-Type`` says, as
    the chat endpoints read theirs.

    FastAPI parses a body as JSON only when it is declared JSON, and hands
    anything else to validation as bytes ("Input should be a valid
    dictionary"), so ``curl -d`` (which says
    ``application/x-www-form-urlencoded``), a missing type or ``text/plain``
    got a misleading 400 for a well-formed body. None of the gateway's own
    endpoints takes a form, so nothing is lost by it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # no body to read: nothing to do per request

        async def read_as_json(request: Request) -> Response:
            headers = request.scope["headers"]
            declared = next((v for k, v in headers if k == b"content-type"), b"")
            main, _, _ = declared.partition(b";")
            if main.strip().lower() != _JSON and not main.strip().lower().endswith(b"+json"):
                kept = [(k, v) for k, v in headers if k != b"content-type"]
                scope = {**request.scope, "headers": [*kept, (b"content-type", _JSON)]}
                request = Request(scope, request.receive)
            return await handler(request)

        return read_as_json


def keyed_router(prefix: str, tag: str, route_class: type[APIRoute] | None = None) -> APIRouter:
    """The router of a group of the gateway's own endpoints behind a key.

    Answers are rendered by ``JSONResponse`` (json.dumps), as they always were,
    rather than by FastAPI's default for response models, Pydantic's JSON
    writer, which spells some floats (scores, metadata, times) otherwise:
    ``1e-05`` becomes ``1e-5``. Bodies are read as JSON (:class:`JSONBodyRoute`,
    or ``route_class``, a subclass of it).
    """
    return APIRouter(
        prefix=prefix,
        tags=[tag],
        responses=KEYED,
        default_response_class=JSONResponse,
        route_class=route_class or JSONBodyRoute,
    )


# Every route that takes a request body, besides its own 400s.
WITH_BODY: Responses = errors(400, 408, 413)
# Every route that sends the request to an LLM.
UPSTREAM: Responses = errors(
    UpstreamBroke, UpstreamInvalid, (NoUpstreamAvailable, _WHY[503]), UpstreamTimedOut
)
NO_MODEL = (UnknownModel, "No model of that name here")


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` put where they are referred to: FastAPI adds to
    the document's components only the models its routes parse. (The request
    models are not recursive, so this ends.)"""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return resolve({**definitions[ref.removeprefix("#/$defs/")], **rest})
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that reads its JSON body itself: the
    body's schema, which the gateway checks (other fields go upstream as sent)."""
    content = {"application/json": {"schema": _inlined(model.model_json_schema())}}
    return {"requestBody": {"required": True, "content": content}}


def relayed(description: str) -> Responses:
    """The 200 of an endpoint that relays the LLM's answer: JSON (the route's
    ``response_model``), or a stream of server-sent events when asked for one
    (each event as FastAPI declares its own streams: ``data`` is the LLM's, as sent)."""
    event = {
        "type": "object",
        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    }
    stream = {"itemSchema": event}
    return {200: {"description": description, "content": {"text/event-stream": stream}}}
