"""``POST /v1/chat/completions``: recall, forward, relay, remember.

The body is forwarded as the client sent it, every field included, except
that the gateway's own ``memory`` object is removed and recalled memories are
added to the leading system message. When neither applies, the original
bytes go upstream untouched (no re-encoding on the hot path).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from gateway.api.identity import plan_turn
from gateway.api.memory_fit import MemoryFit
from gateway.api.relay import MemoryPlan, Relay
from gateway.api.schemas import ChatRequest
from gateway.api.wire import CHAT_WIRE, Wire
from gateway.auth import Principal, PrincipalDep
from gateway.errors import APIError, unavailable
from gateway.memory.embedder_client import EmbedderRejected
from gateway.memory.prompt import inject_memories, last_user_text, recall_query
from gateway.memory.service import MemoryUnavailable
from gateway.services import Services, ServicesDep
from gateway.upstream.availability import why_unavailable
from gateway.upstream.http import Timeouts
from gateway.upstream.pool import NoUpstreamAvailable, OpenedReply, Target, UpstreamFailed
from gateway.upstream.replica import CHAT, Call
from gateway.upstream.router import UnknownModel

logger = logging.getLogger("gateway.chat")
router = APIRouter()
Body = TypeVar("Body", bound=BaseModel)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise APIError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_request")
    return body


def validate_chat(body: dict[str, Any]) -> ChatRequest:
    return validated(ChatRequest, body)


def validated(schema: type[Body], body: dict[str, Any]) -> Body:
    """``body`` read as ``schema``, or a 400 naming the first wrong field."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise APIError(
            400, f"{where}: {first['msg']}", code="invalid_request", param=where
        ) from None


JSON_WHITESPACE = b" \t\n\r"
USAGE_MEMBER = b'"stream_options":{"include_usage":true},'


def ask_for_usage(raw: bytes) -> bytes | None:
    """``raw``, a JSON object without ``stream_options``, with that member added
    in front of its first: the client's bytes stay as they were, and a long
    conversation is not re-encoded. None when ``raw`` is not UTF-8 text that
    starts with ``{`` (json also reads UTF-16 and UTF-32, and a BOM); then the
    caller re-encodes. The object has members (``model``, ``messages``), so
    the comma is right.
    """
    if b"\x00" in raw[:4]:  # UTF-16 or UTF-32: every ASCII character has a zero byte
        return None
    start = len(raw) - len(raw.lstrip(JSON_WHITESPACE))
    if raw[start : start + 1] != b"{":
        return None
    return raw[: start + 1] + USAGE_MEMBER + raw[start + 1 :]


def plan_memory(
    chat: ChatRequest, body: dict[str, Any], principal: Principal, services: Services
) -> MemoryPlan:
    """Memory is on when the request names a user (see gateway.api.identity).

    ``body`` is the request itself (already validated as ``chat``).
    """
    query = last_user_text(body["messages"])
    return plan_turn(body, chat.memory, query, principal, services, param="messages")


def chat_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat body's JSON schema, and the definitions it refers to, which
    ``create_app`` adds to the document's components (where the refs point)."""
    return body_schema(ChatRequest)


def body_schema(schema: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A body's JSON schema, and the definitions it refers to."""
    document = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    return document, document.pop("$defs", {})


def declared_body(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its body itself (to
    forward it byte for byte), so it is declared rather than derived."""
    content = {"application/json": {"schema": body_schema(schema)[0]}}
    return {"requestBody": {"required": True, "content": content}}


@router.post("/v1/chat/completions", openapi_extra=declared_body(ChatRequest))
async def chat_completions(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
) -> Response:
    started = time.perf_counter()
    raw = await request.body()
    body = parse_json_object(raw)
    chat = validate_chat(body)
    targets = resolve_model(services, chat.model)
    plan = plan_memory(chat, body, principal, services)
    headers: dict[str, str] = {}
    modified = body.pop("memory", None) is not None

    own_messages = body["messages"]

    def put(block: str | None) -> None:
        body["messages"] = inject_memories(own_messages, block) if block else own_messages

    fit = await recall_fit(services, plan, headers, targets, chat.model, dict(body), put)
    modified = modified or bool(fit.injected)

    stream = bool(chat.stream)
    wants_usage = True
    if stream:
        # Ask for usage in streams (token metrics); a client that did not ask
        # for it does not get the extra event (see StreamAccumulator).
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        if not wants_usage and (options is None or isinstance(options, dict)):
            body["stream_options"] = {**(options or {}), "include_usage": True}
            asked = None if modified or options is not None else ask_for_usage(raw)
            if asked is None:
                modified = True
            else:
                raw = asked
    encode = encoder(raw, body, modified, chat.model)
    return await relay_turn(
        request, services, targets, encode, plan, started, chat.model, headers,
        stream=stream, drop_usage=not wants_usage, memories=fit,
    )  # fmt: skip


def encoder(
    raw: bytes, body: dict[str, Any], modified: bool, model: str
) -> Callable[[Target], bytes]:
    """The bytes to send to each target: the client's own when nothing changed
    (no re-encoding), ``body`` when the gateway changed it, and the target's
    model name where it knows the model by another."""

    def encode(target: Target) -> bytes:
        if target.model is not None and target.model != model:
            return json.dumps({**body, "model": target.model}).encode()
        return json.dumps(body).encode() if modified else raw

    return encode


async def relay_turn(
    request: Request,
    services: Services,
    targets: list[Target],
    encode: Callable[[Target], bytes],
    plan: MemoryPlan,
    started: float,
    model: str,
    headers: dict[str, str],
    *,
    stream: bool,
    drop_usage: bool = False,
    wire: Wire = CHAT_WIRE,
    call: Call = CHAT,
    memories: MemoryFit | None = None,
) -> Response:
    """Send the request upstream and relay the answer (a stream when the client
    asked for one or the upstream sends one); remembering follows the relay.
    ``memories`` puts fewer memories, or none, into the body for a resend
    when they, not the client's request, overflowed the context."""
    request_id = getattr(request.state, "request_id", None)
    timeouts = services.stream_timeout if stream else services.upstream_timeout
    # A completion's headers come when it is done; a stream's, before the first token.
    settings = services.settings
    headers_timeout_s = settings.stream_idle_timeout_s if stream else settings.total_timeout_s

    async def forward() -> Response:
        opened = await _open(
            services, targets, encode, timeouts, headers_timeout_s, request_id, call
        )
        # The memories, not the client's request, overflowed the context: fewer, then none.
        while memories is not None and (
            (injected := await memories.refit_after(opened, services.pool)) is not None
        ):
            headers["x-memory-hits"] = str(injected)
            opened = await _open(
                services, targets, encode, timeouts, headers_timeout_s, request_id, call
            )
        relay = Relay(services, opened, plan, started, model, drop_usage=drop_usage, wire=wire)
        reply = opened.response
        # A pass-through endpoint streams when its upstream does; the others as asked.
        sse = reply.headers.get("content-type", "").startswith("text/event-stream")
        if reply.status_code != 200 or not (stream or (sse and not wire.json_only)):
            return await relay.complete(headers)  # a completion, or an error answer
        return StreamingResponse(
            relay.stream(), media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # Starlette notices a vanished client only while streaming a body; until the
    # upstream has answered, this watch cancels the upstream call when they go.
    return await _unless_disconnected(request, forward())


def resolve_model(services: Services, model: str) -> list[Target]:
    try:
        return services.router.resolve(model)
    except UnknownModel as exc:
        shown = ", ".join(exc.available[:50]) or "none yet"
        raise APIError(
            404,
            f"model {model!r} does not exist here; available: {shown}",
            code="model_not_found",
            param="model",
        ) from None


async def _open(
    services: Services,
    targets: list[Target],
    encode: Callable[[Target], bytes],
    timeouts: Timeouts,
    headers_timeout_s: float,
    request_id: str | None,
    call: Call = CHAT,
) -> OpenedReply:
    try:
        return await services.pool.open_chat(
            targets,
            encode,
            timeouts=timeouts,
            headers_timeout_s=headers_timeout_s,
            request_id=request_id,
            call=call,
        )
    except NoUpstreamAvailable as exc:
        verdict = why_unavailable([target.upstream for target in targets])
        raise unavailable(
            f"{verdict.message} [{exc}]", code=verdict.code, retry_after_s=2
        ) from None
    except UpstreamFailed as exc:
        retry = {"Retry-After": str(max(1, int(exc.retry_after or 1)))}
        status = exc.status if exc.status in (429, 502, 503, 504) else 502
        raise APIError(status, str(exc), code="upstream_unavailable", headers=retry) from None


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[Response]) -> Response:
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # the client left: stop waiting on the upstream
    if not task.done():
        # cancel() only asks; wait until the upstream call has really unwound
        # (reading the result before that would be an error, not a 499).
        await asyncio.wait((task,))
    if task.cancelled():
        # Nobody will read this; 499 ("client closed request") keeps the metrics honest.
        return Response(status_code=499)
    return task.result()


async def recall_fit(
    services: Services,
    plan: MemoryPlan,
    headers: dict[str, str],
    targets: list[Target],
    model: str,
    conversation: dict[str, Any],
    put: Callable[[str | None], None],
) -> MemoryFit:
    """Recall, and put the memories that fit the model's context window beside
    ``conversation`` (a chat-shaped view of the request, without memories) into
    the request through ``put``; sets ``x-memory-hits`` (and ``x-memory-status``
    when degraded) when memory is on."""
    fit = MemoryFit(targets, model, services.router.context_windows, conversation, put)
    if plan.scope is not None:
        headers["x-memory-hits"] = str(fit.inject(await _recall(services, plan, headers)))
    return fit


async def _recall(services: Services, plan: MemoryPlan, headers: dict[str, str]) -> list[Any]:
    if plan.top_k <= 0 or not plan.query or plan.scope is None:
        return []
    try:
        return await services.memory.recall(
            plan.scope, recall_query(plan.query), plan.top_k, services.settings.memory_min_score
        )
    except (MemoryUnavailable, EmbedderRejected) as exc:
        # A refused query is not the client's fault (it is valid text, cut to a size
        # any embedder should take): answered without memory, like an embedder outage.
        if isinstance(exc, EmbedderRejected):
            logger.warning("the embedder refused a recall query: %s", exc)
        if services.settings.memory_required:
            raise unavailable(
                f"memory is required but unavailable: {exc}",
                code="memory_unavailable",
                retry_after_s=2,
            ) from None
        headers["x-memory-status"] = "degraded"
        return []
