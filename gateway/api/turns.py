"""A conversation turn on the Responses or Messages API: recall, forward, relay, remember.

The same steps as chat (gateway.api.chat), through the same helpers; what an
API adds is where its latest user text is, where recalled memories go, and
how its replies read (a ``Wire``). As for chat, what goes upstream comes
from gateway.api.outgoing: the body as the client sent it, unless the
gateway removed its ``memory`` object or added memories, and then only
those change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gateway.api.chat import parse_json_object, recall_fit, relay_turn, resolve_model, validated
from gateway.api.identity import plan_turn
from gateway.api.outgoing import Incoming, Inject, Json
from gateway.api.schemas import MemoryOptions
from gateway.api.wire import Wire
from gateway.auth import Principal
from gateway.services import Services
from gateway.upstream.pool import Target
from gateway.upstream.replica import Call


class TurnRequest(BaseModel):
    """What the gateway reads of a turn's body; every other field goes upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    # Strict: the body goes upstream as sent, so a lax `"stream": 1` would be a
    # stream here and, to an upstream that reads it strictly, a plain answer.
    stream: StrictBool | None = False
    memory: MemoryOptions | None = None


@dataclass(frozen=True)
class TurnAPI:
    """One conversational API: its body's schema, its upstream endpoint, the
    field holding the conversation, where the latest user text is, how recalled
    memories go into a body, and the body seen as a chat request (what the
    context budget of gateway.memory.budget measures)."""

    schema: type[TurnRequest]
    call: Call
    param: str
    query: Callable[[Json], str]
    inject: Inject
    as_chat: Callable[[Json], Json]


async def serve_turn(
    request: Request,
    principal: Principal,
    services: Services,
    api: TurnAPI,
    wire: Wire,
    narrow: Callable[[Any, list[Target]], list[Target]] | None = None,
    on_open: Callable[[Target], None] | None = None,
) -> Response:
    """``narrow`` may restrict the model's targets (a response that continues
    another must go to the replica holding it); ``on_open`` learns the target
    that answered."""
    started = time.perf_counter()
    raw = await request.body()
    body = parse_json_object(raw)
    turn = validated(api.schema, body)
    targets = resolve_model(services, turn.model)
    if narrow is not None:
        targets = narrow(turn, targets)
    top_k = services.settings.memory_top_k
    plan = plan_turn(body, turn.memory, api.query(body), principal, top_k, param=api.param)
    headers: dict[str, str] = {}
    incoming = Incoming(raw, body, turn.model, api.inject)
    fit = await recall_fit(services, plan, headers, targets, incoming, api.as_chat(incoming.fields))
    return await relay_turn(
        request, services, targets, fit.outgoing(), plan, started, turn.model, headers,
        stream=bool(turn.stream), wire=wire, call=api.call, memories=fit, on_open=on_open,
    )  # fmt: skip
