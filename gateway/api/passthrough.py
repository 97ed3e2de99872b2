"""Every other endpoint of the LLM server, passed through.

vLLM serves more than chat: ``/v1/completions``, ``/v1/embeddings``, the
audio transcription and translation APIs (multipart), ``/tokenize``,
``/detokenize``, score, rerank, pooling, classify,
``/v1/messages/count_tokens``, and more with each release. They reach the
upstream that serves the request's ``model`` (read from a JSON body or a
multipart form field), or the primary when a request names none, with
everything a chat request gets: the tenant's key, the body and concurrency
limits, health-aware routing with fallback, the pool's retry policy (never
once the upstream may have started work), metrics and the error envelope.

The body goes as the client sent it, byte for byte; only an alias that the
upstream knows by another name changes the ``model`` value (in place, in a
form too). A body that is not a multipart form is read as JSON whatever its
content type says, as chat reads its body (text/plain, a missing type,
anything else): so its model is always resolved, NaN and Infinity never go
upstream, and an upstream that ignores the content type cannot be handed a
body the gateway did not check. It goes as ``application/json``, or as the
JSON type the client named; a form goes as its own type.

The answer comes back as the upstream sent it: JSON, text, or an SSE stream
relayed as it arrives. An upstream without the endpoint answers its own 404,
which the client gets as a 404.

Routes: vLLM's known paths each have their own (so metrics name them), and
any other ``/v1/…`` path goes upstream too, except the gateway's own paths:
a wrong method on them is the gateway's 405, and one of them written with a
slash too many (``/v1/memories/``) its 404, never forwarded; and the paths
that manage the upstream account itself (files, batches, fine-tuning,
assistants, vector stores, ...: ``ACCOUNT_PATHS``), a 403.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Match

from gateway.api.chat import parse_json_object, relay_turn, resolve_model
from gateway.api.outgoing import Outgoing
from gateway.api.relay import MemoryPlan
from gateway.api.wire import Wire
from gateway.auth import PrincipalDep
from gateway.errors import APIError, allowed_methods
from gateway.services import Services, ServicesDep
from gateway.upstream.replica import Call
from gateway.upstream.sse import StreamAccumulator

router = APIRouter()

PASS_WIRE = Wire("/v1/{path}", StreamAccumulator, lambda _: None, json_only=False)
# vLLM's endpoints under its OpenAI base URL, and beside it (at the server's root).
V1_PATHS = (
    "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions",
    "/v1/audio/translations", "/v1/score", "/v1/rerank", "/v1/classify",
    "/v1/messages/count_tokens",
)  # fmt: skip
ROOT_PATHS = (
    "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/rerank",
    "/v2/rerank", "/invocations",
)  # fmt: skip
# The upstream account's own resources, reached with the operator's key: every
# tenant would share them (one tenant's uploaded files listed and read by
# another, the operator's batches and fine-tunes started or cancelled), and
# vLLM's adapter loading changes the model for everyone. Never forwarded (403).
ACCOUNT_PATHS = frozenset({
    "assistants", "batches", "containers", "conversations", "evals", "files", "fine-tunes",
    "fine_tuning", "organization", "projects", "realtime", "threads", "uploads",
    "vector_stores", "load_lora_adapter", "unload_lora_adapter",
})  # fmt: skip
MAX_MODEL = 256
FORM = "multipart/form-data"
_FORM_NAME = r'(?:^|[;\s])name="{}"'


def form_field(raw: bytes, content_type: str, name: str) -> tuple[int, int] | None:
    """Where the value of the multipart form field ``name`` lies in ``raw``,
    or None: found in place, so the body need not be parsed or rebuilt."""
    # A parameter's name is case-insensitive (RFC 9110 §5.6.6), its value quoted or not.
    found = re.search(r'(?:^|;)\s*boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if found is None:
        return None
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    wanted = re.compile(_FORM_NAME.format(re.escape(name)).encode(), re.IGNORECASE)
    pos = raw.find(delimiter)
    while pos >= 0:
        head_end = raw.find(b"\r\n\r\n", pos)
        end = raw.find(b"\r\n" + delimiter, head_end)
        if head_end < 0 or end < 0:
            return None
        if wanted.search(raw[pos + len(delimiter) : head_end]):
            return head_end + 4, end
        pos = end + 2
    return None


def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_MODEL:
        raise APIError(
            400,
            f"model: must be a string of 1 to {MAX_MODEL} characters",
            code="invalid_request",
            param="model",
        )
    return value


def read_request(raw: bytes, content_type: str) -> tuple[str | None, bool, Outgoing]:
    """The model a body names (None: none), whether it asks for a stream, and
    what goes upstream (the client's bytes, unless an alias is renamed)."""
    if _media_type(content_type) == FORM:
        span = form_field(raw, content_type, "model")
        if span is None:
            return None, False, Outgoing(raw)
        start, end = span
        model = _model_name(raw[start:end].decode("utf-8", "replace"))
        stream = form_field(raw, content_type, "stream")
        streams = stream is not None and raw[stream[0] : stream[1]].strip() == b"true"
        return model, streams, Outgoing(raw, model, model_at=span)
    if not raw:
        return None, False, Outgoing(raw)
    # Every other body is JSON, as chat's is, whatever its content type says
    # (see the module's docstring).
    body = parse_json_object(raw)
    if "model" in body:
        model = _model_name(body["model"])
        return model, body.get("stream") is True, Outgoing(raw, model, body)
    return None, body.get("stream") is True, Outgoing(raw)


def _media_type(content_type: str) -> str:
    """``text/plain`` of ``Text/Plain; charset=utf-8`` (media types ignore case)."""
    return content_type.partition(";")[0].strip().lower()


def upstream_content_type(content_type: str) -> str:
    """The content type sent upstream: a form's or a JSON type as the client
    gave it; ``application/json`` for the rest, which was read as JSON."""
    media = _media_type(content_type)
    if media in (FORM, "application/json") or media.endswith("+json"):
        return content_type
    return "application/json"


def _check_path(path: str) -> None:
    """Refuse dot segments: joined to the upstream's URL, ``/v1/../x`` (or its
    ``%2e%2e`` form, which the server decodes) would reach paths outside its
    ``/v1``, or outside the prefix of a base URL, with the operator's key."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise APIError(400, "the path holds a '.' or '..' segment", code="invalid_path")


async def pass_through(request: Request, services: Services, wire: Wire, *, root: bool) -> Response:
    started = time.perf_counter()
    _check_path(request.url.path)
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    model, stream, outgoing = read_request(raw, content_type)
    targets = resolve_model(services, model) if model else services.router.default_targets()
    path = request.url.path if root else request.url.path.removeprefix("/v1")
    kind = upstream_content_type(content_type)
    call = Call(path, request.method, kind, request.url.query, root)
    return await relay_turn(
        request, services, targets, outgoing, MemoryPlan(), started, model or "", {},
        stream=stream, wire=wire, call=call,
    )  # fmt: skip


Handler = Callable[[Request, PrincipalDep, ServicesDep], Awaitable[Response]]


def _handler(label: str, *, root: bool) -> Handler:
    wire = replace(PASS_WIRE, route=label)

    async def forward(request: Request, _: PrincipalDep, services: ServicesDep) -> Response:
        return await pass_through(request, services, wire, root=root)

    return forward


for _path in (*V1_PATHS, *ROOT_PATHS):
    router.add_api_route(
        _path, _handler(_path, root=_path in ROOT_PATHS), methods=["POST"],
        include_in_schema=False,
    )  # fmt: skip

_forward_any = _handler(PASS_WIRE.route, root=False)


@router.api_route(
    "/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
async def any_other(request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    # A gateway path asked with a method it does not serve matches its own
    # routes in part only; it stays the gateway's (405), never forwarded.
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is Match.PARTIAL:
            allow = {"Allow": allowed_methods(request)}
            raise APIError(405, "Method Not Allowed", code="method_not_allowed", headers=allow)
    if (own := _own_path(request)) is not None:
        raise APIError(
            404, f"no such path: {request.url.path!r}; this gateway serves {own!r}",
            code="not_found",
        )  # fmt: skip
    if _account_path(request.scope["path"]):
        raise APIError(
            403, f"{request.url.path!r} manages the LLM upstream's account, which every "
            "tenant of this gateway shares: it is not served through the gateway",
            code="upstream_account_path",
        )  # fmt: skip
    return await _forward_any(request, principal, services)


def _account_path(path: str) -> bool:
    """Whether ``path`` (under /v1) names one of ``ACCOUNT_PATHS``, however written."""
    segments = [segment for segment in path.split("/") if segment]
    return len(segments) > 1 and segments[1].lower() in ACCOUNT_PATHS


def _own_path(request: Request) -> str | None:
    """The gateway's own path that the request names with a slash too many
    (``/v1/memories/``, ``/v1//chat/completions``), or None. Forwarded, such a
    request would carry a memory's text, or a chat without its memory, to the
    upstream with the operator's key; it is answered 404 instead. So is any
    path in the memory API's namespace, however written (``/v1/Memories``,
    mem0's ``/v1/memories/{id}/history``): never the upstream's."""
    path: str = request.scope["path"]
    segments = [segment for segment in path.split("/") if segment]
    canonical = "/" + "/".join(segments)
    if canonical != path:
        scope = {**request.scope, "path": canonical}
        for route in request.app.state.routes:  # every router's, as added (gateway.app)
            if route.endpoint is not any_other and route.matches(scope)[0] is not Match.NONE:
                return canonical
    if len(segments) > 1 and segments[1].lower() == "memories":
        return "/v1/memories"
    return None
