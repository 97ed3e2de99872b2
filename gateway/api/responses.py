"""``/v1/responses``: OpenAI's Responses API, with memory.

Recall: for the turn's latest user input (``input`` as a string, or the
last user item's text), like chat. Where the memories go, so that every
model accepts them: vLLM turns ``instructions`` into the conversation's
leading system message, so the memory block is appended to the request's
``instructions`` (or becomes them). Only when ``instructions`` is absent and
the input itself starts with a system or developer item does the block join
that item instead, since ``instructions`` would then add a second system
message, which several chat templates reject. ``instructions`` also suits
chained turns: a response continued through ``previous_response_id`` does
not carry the earlier turn's instructions, so memories are not repeated in
the history.

Relay: plain and streamed replies go back unchanged; the turn (the input's
latest user text and the output text) is remembered once the response has
completed, and its usage counted.

``GET /v1/responses/{id}``, ``DELETE`` and ``POST /v1/responses/{id}/cancel``
(and ``…/input_items``) go to the replica that made the response, for the
tenant that made it only (gateway.upstream.owners); so does a request that
continues a response (``previous_response_id``).
"""

from __future__ import annotations

import functools
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field

from gateway.api.answers import ModelResponse
from gateway.api.chat import relay_turn
from gateway.api.outgoing import Json, Outgoing
from gateway.api.passthrough import PASS_WIRE
from gateway.api.relay import MemoryPlan
from gateway.api.turns import TurnAPI, TurnRequest, serve_turn
from gateway.api.wire import Wire
from gateway.auth import Principal, PrincipalDep
from gateway.errors import APIError
from gateway.memory.prompt import inject_memories, last_user_text
from gateway.memory.records import is_blank
from gateway.openapi import KEYED, UPSTREAM, WITH_BODY, errors, json_body, relayed
from gateway.services import Services, ServicesDep
from gateway.upstream.owners import Owner
from gateway.upstream.pool import Target
from gateway.upstream.replica import Call
from gateway.upstream.sse_apis import ResponsesStream, is_response, response_text

router = APIRouter(responses=KEYED)
ROUTE = "/v1/responses"


class ResponsesRequest(TurnRequest):
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)


def latest_input(body: Json) -> str:
    """The latest user text of a Responses request's ``input``."""
    given = body.get("input")
    if isinstance(given, str):
        return "" if is_blank(given) else given.strip()
    return last_user_text(given) if isinstance(given, list) else ""


def add_memories(body: Json, block: str) -> Json:
    """``body`` with the memory block where the conversation's one system message forms."""
    instructions = body.get("instructions")
    given = body.get("input")
    if isinstance(instructions, str) and instructions:
        return {**body, "instructions": f"{instructions}\n\n{block}"}
    if isinstance(given, list) and given and given[0].get("role") in ("system", "developer"):
        return {**body, "input": inject_memories(given, block, part_type="input_text")}
    return {**body, "instructions": block}


def as_chat(body: Json) -> Json:
    """The conversation vLLM builds from a Responses request, for the context budget."""
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given or []
    system = (
        [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    )
    chat = {"messages": [*system, *items], "tools": body.get("tools")}
    return {**chat, "max_tokens": body.get("max_output_tokens")}


RESPONSES = TurnAPI(
    ResponsesRequest, Call("/responses"), "input", latest_input, add_memories, as_chat
)


def _wire(services: Services, tenant: str, made: list[Owner]) -> Wire:
    """The Responses wire for one request: it notes the new response's owner
    (``made``: where the request went, once it has)."""

    def record(response_id: str) -> None:
        if made:
            services.response_owners.record(response_id, tenant, *made[0])

    def reply_text(response: Json) -> str | None:
        if isinstance(response.get("id"), str):
            record(response["id"])
        return response_text(response)

    stream = functools.partial(ResponsesStream, on_id=record)
    return Wire(ROUTE, stream, reply_text, is_reply=is_response)


def _owned(services: Services, principal: Principal, response_id: str) -> tuple[Target, Owner]:
    """The replica holding ``response_id`` for this tenant (asked for the model by
    the name it was made with there), and where it was made; or 404."""
    owner = services.response_owners.owner_of(response_id, principal.tenant)
    upstream = services.replicas.get(owner.upstream) if owner is not None else None
    if owner is None or upstream is None:
        raise APIError(
            404,
            f"no response {response_id!r} here (unknown to this gateway, or made "
            "before it restarted)",
            code="response_not_found",
        )
    return Target(upstream, owner.model), owner


NO_RESPONSE = (404, "No response of that id made here for this tenant")


@router.post(
    ROUTE,
    response_model=ModelResponse,
    openapi_extra=json_body(ResponsesRequest),
    responses={
        **relayed("The LLM's response"), **WITH_BODY, **UPSTREAM,
        **errors((404, "No model of that name, or no previous response of that id")),
    },
)  # fmt: skip
async def create_response(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    made: list[Owner] = []  # where the request went (the replica that answered)
    asked_as: list[str] = []  # the model the client named

    def narrow(turn: ResponsesRequest, targets: list[Target]) -> list[Target]:
        asked_as[:] = [turn.model]
        if turn.previous_response_id is None:
            return targets
        # The replica that holds the chain, asked for the model by the name it has
        # there: an alias's upstream model, as the unchained turn was.
        owner = _owned(services, principal, turn.previous_response_id)[0].upstream
        same = [t for t in targets if t.upstream is owner] or [
            t for t in targets if t.upstream.group == owner.group
        ]
        return [Target(owner, same[0].model if same else None)]

    def on_open(target: Target) -> None:
        made[:] = [Owner(target.upstream.name, target.model, asked_as[0] if asked_as else "")]

    wire = _wire(services, principal.tenant, made)
    return await serve_turn(request, principal, services, RESPONSES, wire, narrow, on_open)


async def _to_owner(
    request: Request, principal: Principal, services: Services, response_id: str, action: str
) -> Response:
    target, owner = _owned(services, principal, response_id)
    path = f"/responses/{urllib.parse.quote(response_id, safe='')}{action}"
    call = Call(path, request.method, query=request.url.query)
    raw = await request.body()
    stream = request.query_params.get("stream") == "true"
    # Made through an alias, the response names the upstream's model: the client
    # gets the alias back, as it did when the response was made.
    return await relay_turn(
        request, services, [target], Outgoing(raw), MemoryPlan(), time.perf_counter(),
        owner.asked_as, {}, stream=stream, wire=PASS_WIRE, call=call,
    )  # fmt: skip


def _by_id(action: str) -> Callable[..., Awaitable[Response]]:
    async def to_owner(
        response_id: str, request: Request, principal: PrincipalDep, services: ServicesDep
    ) -> Response:
        return await _to_owner(request, principal, services, response_id, action)

    return to_owner


# The stored response's endpoints, as OpenAI names them (vLLM serves GET and cancel).
for _method, _action in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items")):
    router.add_api_route(
        f"{ROUTE}/{{response_id}}{_action}", _by_id(_action), methods=[_method],
        name=f"{_method.lower()}_response{_action.replace('/', '_')}",
        response_model=dict[str, Any],
        responses={**relayed("The LLM's answer"), **errors(400, NO_RESPONSE), **UPSTREAM},
    )  # fmt: skip
