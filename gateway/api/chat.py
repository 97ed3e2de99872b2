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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from gateway.api.schemas import ChatRequest
from gateway.auth import Principal, PrincipalDep
from gateway.errors import APIError, unavailable
from gateway.memory.prompt import format_memories, inject_memories, last_user_text
from gateway.memory.records import NewMemory, Scope
from gateway.memory.service import MemoryUnavailable
from gateway.services import Services, ServicesDep
from gateway.upstream.pool import NoUpstreamAvailable, OpenedReply, Target, UpstreamFailed
from gateway.upstream.router import UnknownModel
from gateway.upstream.sse import (
    StreamAccumulator,
    error_event,
    rename_model,
    reply_text,
)

logger = logging.getLogger("gateway.chat")
router = APIRouter()

# Memories from chat are clipped: a pasted document is not a memory.
MAX_CHAT_MEMORY_CHARS = 4000


@dataclass
class MemoryPlan:
    scope: Scope | None = None
    top_k: int = 0
    store: bool = False
    session_id: str | None = None
    query: str = ""


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
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


def plan_memory(chat: ChatRequest, principal: Principal, services: Services) -> MemoryPlan:
    """Memory is on when the request names a user (``memory.user_id`` or ``user``)."""
    options = chat.memory
    user_id = (options.user_id if options else None) or chat.user
    if not user_id or (options is not None and not options.enabled):
        return MemoryPlan()
    top_k = options.top_k if options and options.top_k is not None else None
    messages = [m.model_dump() for m in chat.messages]
    return MemoryPlan(
        scope=Scope(principal.tenant, user_id),
        top_k=services.settings.memory_top_k if top_k is None else top_k,
        store=options.store if options else True,
        session_id=options.session_id if options else None,
        query=last_user_text(messages),
    )


@router.post("/v1/chat/completions", openapi_extra={"requestBody": {
    "required": True,
    "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
}})  # fmt: skip
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
    plan = plan_memory(chat, principal, services)
    headers: dict[str, str] = {}
    modified = body.pop("memory", None) is not None

    if plan.scope is not None:
        hits = await _recall(services, plan, headers)
        headers["x-memory-hits"] = str(len(hits))
        if hits:
            body["messages"] = inject_memories(body["messages"], format_memories(hits))
            modified = True

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
            modified = True
    request_id = getattr(request.state, "request_id", None)
    timeouts = services.stream_timeout if stream else services.upstream_timeout

    async def forward() -> Response:
        opened = await _open(services, targets, encode, timeouts, request_id)
        relay = _Relay(services, opened, plan, started, chat.model, drop_usage=not wants_usage)
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
    timeouts: httpx.Timeout,
    request_id: str | None,
) -> OpenedReply:
    try:
        return await services.pool.open_chat(
            targets, encode, timeouts=timeouts, request_id=request_id
        )
    except NoUpstreamAvailable as exc:
        state = "starting" if exc.starting else "unavailable"
        message = (
            "the LLM is starting (loading its model); retry shortly"
            if exc.starting
            else "no LLM upstream is available"
        )
        raise unavailable(f"{message} [{exc}]", code=f"llm_{state}", retry_after_s=2) from None
    except UpstreamFailed as exc:
        retry = {"Retry-After": str(int(exc.retry_after or 1))}
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
        if not task.done():
            task.cancel()  # the client left: stop waiting on the upstream
        watch.cancel()
    if task.cancelled():
        # Nobody will read this; 499 ("client closed request") keeps the metrics honest.
        return Response(status_code=499)
    return task.result()


async def _recall(services: Services, plan: MemoryPlan, headers: dict[str, str]) -> list[Any]:
    if plan.top_k <= 0 or not plan.query or plan.scope is None:
        return []
    try:
        return await services.memory.recall(
            plan.scope, plan.query, plan.top_k, services.settings.memory_min_score
        )
    except MemoryUnavailable as exc:
        if services.settings.memory_required:
            raise unavailable(
                f"memory is required but unavailable: {exc}",
                code="memory_unavailable",
                retry_after_s=2,
            ) from None
        headers["x-memory-status"] = "degraded"
        return []


class _Relay:
    """Relays one upstream response to the client and does the bookkeeping after."""

    def __init__(
        self,
        services: Services,
        opened: OpenedReply,
        plan: MemoryPlan,
        started: float,
        client_model: str,
        *,
        drop_usage: bool = False,
    ) -> None:
        self.services = services
        sent_model = opened.target.model
        # The upstream knew the model by another name: give the client's back.
        self.rename_to = client_model if sent_model and sent_model != client_model else None
        self.model_label = services.router.metric_label(client_model)
        self.drop_usage = drop_usage
        self.opened = opened
        self.plan = plan
        self.started = started
        self.name = opened.upstream.name

    async def complete(self, headers: dict[str, str]) -> Response:
        response = self.opened.response
        try:
            async with asyncio.timeout(self.services.settings.total_timeout_s):
                content = await response.aread()
        except (TimeoutError, httpx.TimeoutException):
            self._finish("timeout")
            raise APIError(504, "the LLM upstream timed out", code="upstream_timeout") from None
        except httpx.TransportError:
            self._finish("stream_error")
            raise APIError(502, "the LLM upstream failed", code="upstream_error") from None
        except asyncio.CancelledError:
            self._finish("client_disconnect")
            raise
        finally:
            await response.aclose()
        if response.status_code == 200:
            self._finish("success")
            self._after_completion(content)
        else:
            self._finish("http_error")
        if self.rename_to is not None and response.status_code == 200:
            content = rename_model(content, self.rename_to) or content
        media_type = response.headers.get("content-type", "application/json")
        return Response(content, response.status_code, headers=headers, media_type=media_type)

    def _after_completion(self, content: bytes) -> None:
        try:
            completion = json.loads(content)
        except ValueError:
            return
        if isinstance(completion, dict):
            self._count_tokens(completion.get("usage"))
            self._remember(reply_text(completion))

    async def stream(self) -> AsyncIterator[bytes]:
        response = self.opened.response
        acc = StreamAccumulator(rename_to=self.rename_to, drop_usage=self.drop_usage)
        outcome = "stream_error"
        first = True
        try:
            async for chunk in response.aiter_raw():
                if first:
                    first = False
                    self.services.metrics.upstream_ttft.labels(self.name).observe(
                        time.perf_counter() - self.opened.sent_at
                    )
                if relayed := acc.feed(chunk):
                    yield relayed
            if tail := acc.flush():
                yield tail
            if acc.completed:
                outcome = "success"
            else:
                yield error_event(
                    "the LLM upstream closed the stream before finishing",
                    "upstream_stream_incomplete",
                )
        except httpx.ReadTimeout:
            outcome = "timeout"
            idle = self.services.settings.stream_idle_timeout_s
            yield error_event(
                f"the LLM upstream sent nothing for {idle:g}s", "upstream_stream_idle_timeout"
            )
        except httpx.TransportError as exc:
            logger.warning("stream from %s broke: %s", self.name, type(exc).__name__)
            yield error_event("the LLM upstream failed mid-stream", "upstream_stream_error")
        except asyncio.CancelledError:
            outcome = "client_disconnect"
            raise
        finally:
            await response.aclose()
            self._finish(outcome)
        if outcome == "success":
            self._count_tokens(acc.usage)
            self._remember(acc.text)

    def _finish(self, outcome: str) -> None:
        now = time.perf_counter()
        upstream_s = now - self.opened.sent_at
        metrics = self.services.metrics
        self.services.pool.record_outcome(self.opened.upstream, outcome)
        metrics.model_requests.labels(self.model_label, self.name, outcome).inc()
        metrics.upstream_duration.labels(self.name).observe(upstream_s)
        metrics.overhead.labels("/v1/chat/completions").observe(
            max(0.0, (now - self.started) - upstream_s)
        )

    def _count_tokens(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for kind in ("prompt", "completion"):
            value = usage.get(f"{kind}_tokens")
            if isinstance(value, int) and value >= 0:
                self.services.metrics.upstream_tokens.labels(self.name, kind).inc(value)

    def _remember(self, reply: str) -> None:
        plan = self.plan
        if plan.scope is None or not plan.store or not plan.query:
            return
        now = datetime.now(UTC)
        memories = [
            NewMemory(text[:MAX_CHAT_MEMORY_CHARS], now, {}, plan.session_id, role, "chat")
            for role, text in (("user", plan.query), ("assistant", reply.strip()))
            if text
        ]
        self.services.spawn(
            self.services.memory.enqueue(plan.scope, memories), name="remember-chat"
        )
