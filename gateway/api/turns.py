"""A conversation turn on the Responses or Messages API: recall, forward, relay, remember.

The same steps as chat (gateway.api.chat), through the same helpers; what an
API adds is where its latest user text is, where recalled memories go, and
how its replies read (a ``Wire``). As for chat, the body goes upstream as
the client sent it, unless the gateway removed its ``memory`` object or
added memories, and then only those change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.chat import (
    encoder,
    parse_json_object,
    recall_fit,
    relay_turn,
    resolve_model,
    validated,
)
from gateway.api.identity import plan_turn
from gateway.api.schemas import MemoryOptions
from gateway.api.wire import Wire
from gateway.auth import Principal
from gateway.services import Services
from gateway.upstream.pool import Target
from gateway.upstream.replica import Call

Json = dict[str, Any]


class TurnRequest(BaseModel):
    """What the gateway reads of a turn's body; every other field goes upstream unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False
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
    inject: Callable[[Json, str], None]
    as_chat: Callable[[Json], Json]


async def serve_turn(
    request: Request,
    principal: Principal,
    services: Services,
    api: TurnAPI,
    wire: Wire,
    narrow: Callable[[Any, list[Target]], list[Target]] | None = None,
    on_send: Callable[[Target], None] | None = None,
) -> Response:
    """``narrow`` may restrict the model's targets (a response that continues
    another must go to the replica holding it); ``on_send`` learns each target
    the request is sent to (the last one answered)."""
    started = time.perf_counter()
    raw = await request.body()
    body = parse_json_object(raw)
    turn = validated(api.schema, body)
    targets = resolve_model(services, turn.model)
    if narrow is not None:
        targets = narrow(turn, targets)
    plan = plan_turn(body, turn.memory, api.query(body), principal, services, param=api.param)
    headers: dict[str, str] = {}
    modified = body.pop("memory", None) is not None
    own = dict(body)  # the fields the memories may replace, as the client sent them

    def put(block: str | None) -> None:
        body.clear()
        body.update(own)
        if block:
            api.inject(body, block)

    fit = await recall_fit(services, plan, headers, targets, turn.model, api.as_chat(body), put)
    modified = modified or bool(fit.injected)

    encode = encoder(raw, body, modified, turn.model)
    if on_send is not None:
        encode = _noting(encode, on_send)
    return await relay_turn(
        request, services, targets, encode, plan, started, turn.model, headers,
        stream=bool(turn.stream), wire=wire, call=api.call, memories=fit,
    )  # fmt: skip


def _noting(
    encode: Callable[[Target], bytes], on_send: Callable[[Target], None]
) -> Callable[[Target], bytes]:
    # The pool encodes the body for each target right before sending it there.
    def sending(target: Target) -> bytes:
        on_send(target)
        return encode(target)

    return sending
