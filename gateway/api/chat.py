"""``POST /v1/chat/completions``: recall, forward, relay, remember.

What goes upstream is decided in one place, gateway.api.outgoing: the body
as the client sent it, without the gateway's ``memory`` object, with recalled
memories in the leading system message (and, for a stream, a request for
usage); the client's own bytes when nothing changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from gateway.api.answers import ChatCompletion
from gateway.api.identity import plan_turn
from gateway.api.memory_fit import MemoryFit
from gateway.api.outgoing import Incoming, Json, Outgoing
from gateway.api.relay import MemoryPlan, Relay
from gateway.api.schemas import ChatRequest
from gateway.api.wire import CHAT_WIRE, Wire
from gateway.auth import Principal, PrincipalDep
from gateway.drain import Drain
from gateway.errors import APIError, validation_message
from gateway.exceptions import (
    EmbedderRejected,
    MemoryRequired,
    MemoryUnavailable,
    ShuttingDown,
)
from gateway.json_depth import TOO_DEEP, nests_deeper
from gateway.memory.prompt import (
    conversation_texts,
    inject_memories,
    last_user_text,
    recall_query,
)
from gateway.openapi import KEYED, NO_MODEL, UPSTREAM, WITH_BODY, errors, json_body, relayed
from gateway.services import Services, ServicesDep
from gateway.upstream.pool import OpenedReply, Target
from gateway.upstream.replica import CHAT, Call

logger = logging.getLogger("gateway.chat")
router = APIRouter(responses=KEYED)
Body = TypeVar("Body", bound=BaseModel)


class NotJsonNumber(ValueError):
    """NaN, Infinity or a number beyond a double's range (``1e999``): Python's json
    reads them, JSON has none of them, and re-encoding the body (memories in, an
    alias's model name) would send the upstream ``Infinity``, which is not JSON."""


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotJsonNumber(text)
    return value


def _no_constant(name: str) -> float:
    raise NotJsonNumber(name)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise APIError(400, TOO_DEEP, code="invalid_json") from None
    except NotJsonNumber as exc:
        raise APIError(
            400,
            f"request body holds {str(exc)[:40]}, which is not a JSON number "
            "(NaN, Infinity and numbers beyond ±1.8e308 have no JSON meaning)",
            code="invalid_json",
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "request body is not valid JSON", code="invalid_json") from None
    if nests_deeper(raw):  # parsed, but deeper than the gateway's own limit
        raise APIError(400, TOO_DEEP, code="invalid_json")
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
        where = ".".join(str(part) for part in body_path(body, first))
        raise APIError(
            400, f"{where}: {validation_message(first)}", code="invalid_request", param=where
        ) from None


def body_path(body: Any, error: Mapping[str, Any]) -> list[str | int]:
    """Where in ``body`` a validation error is, as the client wrote the body.

    Pydantic's location also names the member of a union it tried ("content"
    then "str" for a field that is text or a list of parts), which is no key
    of the body: such steps are left out. A missing field's own name stays."""
    loc = list(error["loc"])
    path: list[str | int] = []
    node = body
    for i, part in enumerate(loc):
        if _has(node, part):
            node = node[part]
        elif not (i == len(loc) - 1 and error.get("type") == "missing"):
            continue  # a union member's tag
        path.append(part)
    return path


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def into_messages(body: Json, block: str) -> Json:
    """Chat's memories go into the leading system message (one is made if none leads)."""
    return {**body, "messages": inject_memories(body["messages"], block)}


def plan_memory(
    chat: ChatRequest, body: dict[str, Any], principal: Principal, services: Services
) -> MemoryPlan:
    """Memory is on when the request names a user (see gateway.api.identity).

    ``body`` is the request itself (already validated as ``chat``).
    """
    query = last_user_text(body["messages"])
    top_k = services.settings.memory_top_k
    return plan_turn(body, chat.memory, query, principal, top_k, param="messages")


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    openapi_extra=json_body(ChatRequest),
    responses={**relayed("The LLM's completion"), **WITH_BODY, **errors(NO_MODEL), **UPSTREAM},
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
    targets = resolve_model(services, chat.model)
    plan = plan_memory(chat, body, principal, services)
    headers: dict[str, str] = {}
    stream = bool(chat.stream)
    incoming = Incoming(raw, body, chat.model, into_messages, chat_stream=stream)
    fit = await recall_fit(services, plan, headers, targets, incoming, incoming.fields)
    return await relay_turn(
        request, services, targets, fit.outgoing(), plan, started, chat.model, headers,
        stream=stream, memories=fit,
    )  # fmt: skip


async def relay_turn(
    request: Request,
    services: Services,
    targets: list[Target],
    outgoing: Outgoing,
    plan: MemoryPlan,
    started: float,
    model: str,
    headers: dict[str, str],
    *,
    stream: bool,
    wire: Wire = CHAT_WIRE,
    call: Call = CHAT,
    memories: MemoryFit | None = None,
    on_open: Callable[[Target], None] | None = None,
) -> Response:
    """Send ``outgoing`` upstream and relay the answer (a stream when the client
    asked for one or the upstream sends one); remembering follows the relay.
    ``memories`` puts fewer memories, or none, into the body for a resend
    when they, not the client's request, overflowed the context. ``on_open``
    learns the target that answered (each time, if the request went again)."""
    request_id = getattr(request.state, "request_id", None)
    timeouts = services.stream_timeout if stream else services.upstream_timeout
    # A completion's headers come when it is done; a stream's, before the first token.
    settings = services.settings
    headers_timeout_s = settings.stream_idle_timeout_s if stream else settings.total_timeout_s

    async def send(outgoing: Outgoing) -> OpenedReply:
        # Raises NoUpstreamAvailable or UpstreamFailed, answered as gateway.exceptions says.
        opened = await services.pool.open_chat(
            targets, outgoing.bytes_for, timeouts=timeouts,
            headers_timeout_s=headers_timeout_s, request_id=request_id, call=call,
        )  # fmt: skip
        if on_open is not None:
            on_open(opened.target)
        return opened

    async def forward() -> Response:
        opened = await send(outgoing)
        # The memories, not the client's request, overflowed the context: fewer, then none.
        while memories is not None and (
            (injected := await memories.refit_after(opened, services.pool)) is not None
        ):
            headers["x-memory-hits"] = str(injected)
            opened = await send(memories.outgoing())
        if memories is not None:
            memories.count_hits()  # what went in, after any resend with fewer
        drop_usage = not outgoing.usage_asked
        relay = Relay(
            opened, plan, started, model,
            model_label=services.router.metric_label(model), metrics=services.metrics,
            pool=services.pool, memory=services.memory,
            total_timeout_s=settings.total_timeout_s,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            drain=services.drain, drop_usage=drop_usage, wire=wire,
        )  # fmt: skip
        reply = opened.response
        # A pass-through endpoint streams when its upstream does; the others as asked.
        kind = reply.headers.get("content-type")
        sse = (kind or "").startswith("text/event-stream")
        if reply.status_code != 200 or not (stream or (sse and not wire.json_only)):
            return await relay.complete(headers)  # a completion, or an error answer
        if wire.json_only and kind is not None and not sse:
            # Asked for a stream, answered with a page or a JSON body: a 502 (or the
            # error it carries), never raw bytes labelled an event stream. No content
            # type at all is read as the stream it was asked for.
            return await relay.complete(headers, stream_asked=True)
        return StreamingResponse(
            relay.stream(), media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # Starlette notices a vanished client only while streaming a body; until the
    # upstream has answered, this watch cancels the upstream call when they go.
    return await _unless_disconnected(request, services.drain, forward())


def resolve_model(services: Services, model: str) -> list[Target]:
    """The model's targets; raises UnknownModel (404) when nothing serves it."""
    return services.router.resolve(model)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(
    request: Request, drain: Drain, work: Awaitable[Response]
) -> Response:
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    # At the end of the shutdown grace, the drain ends the watch as if the client
    # had left; the client is still there, and told (gateway.drain).
    drain.hold(watch.cancel)
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        drain.release(watch.cancel)
        cut_by_shutdown = watch.cancelled()  # nothing else cancels it before here
        watch.cancel()
        if not task.done():
            task.cancel()  # the client left: stop waiting on the upstream
    if not task.done():
        # cancel() only asks; wait until the upstream call has really unwound
        # (reading the result before that would be an error, not a 499).
        await asyncio.wait((task,))
    if task.cancelled():
        if cut_by_shutdown:
            grace = f"its shutdown grace of {drain.grace_s:g}s ran out before the answer came"
            raise ShuttingDown(grace)
        # Nobody will read this; 499 ("client closed request") keeps the metrics honest.
        return Response(status_code=499)
    return task.result()


async def recall_fit(
    services: Services,
    plan: MemoryPlan,
    headers: dict[str, str],
    targets: list[Target],
    incoming: Incoming,
    conversation: Json,
) -> MemoryFit:
    """Recall, and choose the memories that fit the model's context window beside
    ``conversation`` (a chat-shaped view of ``incoming``, without memories);
    the fit's ``outgoing()`` is the request with them. Sets ``x-memory-hits``
    (and ``x-memory-status`` when degraded) when memory is on."""
    fit = MemoryFit(
        targets, incoming, services.router.context_windows, conversation, owner=plan.scope
    )
    if plan.scope is not None:
        # A memory the request already holds (an earlier turn of this conversation,
        # sent again as its history) would only take a place and the context twice.
        present = conversation_texts(conversation.get("messages"))
        recalled = await _recall(services, plan, headers, extra=min(len(present), plan.top_k))
        fresh = [record for record in recalled or () if record.text not in present]
        headers["x-memory-hits"] = str(fit.inject(fresh[: plan.top_k]))
        if recalled is not None:  # a search ran: its hits are what finally went in
            fit.hits_metric = services.metrics.recall_hits
    return fit


async def _recall(
    services: Services, plan: MemoryPlan, headers: dict[str, str], extra: int = 0
) -> list[Any] | None:
    """The ``top_k`` best memories of the turn, and ``extra`` more (some may be
    left out); None when no search ran (nothing to search for, or degraded)."""
    if plan.top_k <= 0 or not plan.query or plan.scope is None:
        return None
    try:
        return await services.memory.recall(
            plan.scope, recall_query(plan.query), plan.top_k + extra,
            services.settings.memory_min_score,
        )  # fmt: skip
    except (MemoryUnavailable, EmbedderRejected) as exc:
        # A refused query is not the client's fault (it is valid text, cut to a size
        # any embedder should take): answered without memory, like an embedder outage.
        if isinstance(exc, EmbedderRejected):
            logger.warning("the embedder refused a recall query: %s", exc)
        if services.settings.memory_required:
            raise MemoryRequired(str(exc)) from None
        headers["x-memory-status"] = "degraded"
        return None
