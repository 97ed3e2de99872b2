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
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.api.memory_fit import MemoryFit
from gateway.api.relay import MemoryPlan, Relay
from gateway.api.schemas import ChatRequest
from gateway.auth import Principal, PrincipalDep
from gateway.errors import APIError, unavailable
from gateway.memory.embedder_client import EmbedderRejected
from gateway.memory.prompt import last_user_text, recall_query
from gateway.memory.records import Scope, check_text
from gateway.memory.service import MemoryUnavailable
from gateway.services import Services, ServicesDep
from gateway.upstream.availability import why_unavailable
from gateway.upstream.http import Timeouts
from gateway.upstream.pool import NoUpstreamAvailable, OpenedReply, Target, UpstreamFailed
from gateway.upstream.router import UnknownModel

logger = logging.getLogger("gateway.chat")
router = APIRouter()


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise APIError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_request")
    return body


def validate_chat(body: dict[str, Any]) -> ChatRequest:
    try:
        return ChatRequest.model_validate(body)
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
    chat: ChatRequest, messages: list[dict[str, Any]], principal: Principal, services: Services
) -> MemoryPlan:
    """Memory is on when the request names a user (``memory.user_id`` or ``user``).

    ``messages`` is the body's own list (already validated as ``chat.messages``).
    """
    options = chat.memory
    user_id = (options.user_id if options else None) or chat.user
    if not user_id or (options is not None and not options.enabled):
        return MemoryPlan()
    top_k = options.top_k if options and options.top_k is not None else None
    query = last_user_text(messages)
    # The query is embedded and stored: it must be text (no lone surrogate).
    if problem := check_text(query, "the last user message"):
        raise APIError(400, problem, code="invalid_text", param="messages")
    return MemoryPlan(
        scope=Scope(principal.tenant, user_id),
        top_k=services.settings.memory_top_k if top_k is None else top_k,
        store=options.store if options else True,
        session_id=options.session_id if options else None,
        query=query,
    )


def chat_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The chat body's JSON schema, and the definitions it refers to, which
    ``create_app`` adds to the document's components (where the refs point)."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


# The endpoint reads its body itself (to forward it byte for byte), so the
# schema is declared rather than derived from a parameter.
@router.post(
    "/v1/chat/completions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": chat_schema()[0]}},
        }
    },
)
async def chat_completions(
    request: Request,
    principal: PrincipalDep,
    services: ServicesDep,
) -> Response:
    started = time.perf_counter()
    raw = await request.body()
    body = parse_json_object(raw)
    chat = validate_chat(body)
    targets = _route(services, chat.model)
    plan = plan_memory(chat, body["messages"], principal, services)
    headers: dict[str, str] = {}
    modified = body.pop("memory", None) is not None

    fit = MemoryFit(body, targets, chat.model, services.router.context_windows)
    if plan.scope is not None:
        injected = fit.inject(await _recall(services, plan, headers))
        headers["x-memory-hits"] = str(injected)
        modified = modified or injected > 0

    def encode(target: Target) -> bytes:
        if target.model is not None and target.model != chat.model:
            return json.dumps({**body, "model": target.model}).encode()
        return json.dumps(body).encode() if modified else raw

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
    request_id = getattr(request.state, "request_id", None)
    timeouts = services.stream_timeout if stream else services.upstream_timeout
    # A completion's headers come when it is done; a stream's, before the first token.
    settings = services.settings
    headers_timeout_s = settings.stream_idle_timeout_s if stream else settings.total_timeout_s

    async def forward() -> Response:
        opened = await _open(services, targets, encode, timeouts, headers_timeout_s, request_id)
        # The memories, not the client's request, overflowed the context: fewer, then none.
        while (injected := await fit.refit_after(opened, services.pool)) is not None:
            headers["x-memory-hits"] = str(injected)
            opened = await _open(services, targets, encode, timeouts, headers_timeout_s, request_id)
        relay = Relay(services, opened, plan, started, chat.model, drop_usage=not wants_usage)
        if not stream or opened.response.status_code != 200:
            return await relay.complete(headers)  # a completion, or an error answer
        return StreamingResponse(
            relay.stream(), media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # Starlette notices a vanished client only while streaming a body; until the
    # upstream has answered, this watch cancels the upstream call when they go.
    return await _unless_disconnected(request, forward())


def _route(services: Services, model: str) -> list[Target]:
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
) -> OpenedReply:
    try:
        return await services.pool.open_chat(
            targets,
            encode,
            timeouts=timeouts,
            headers_timeout_s=headers_timeout_s,
            request_id=request_id,
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
