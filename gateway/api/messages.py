"""``/v1/messages``: Anthropic's Messages API (which vLLM serves), with memory.

So that Anthropic SDK clients, and agents built on them, can use a
self-hosted model with memory. Recall is for the latest user message's text;
the memory block goes into the top-level ``system`` field, Anthropic's one
place for a system prompt (appended to a string, added as a text block to a
list, or set when there is none). Plain and streamed replies are relayed
unchanged, and the turn is remembered once the message has stopped
(``message_stop``), with its usage counted. The memory user comes from the
same fields as on the other APIs (gateway.api.identity), Anthropic's own
``metadata.user_id`` among them. ``/v1/messages/count_tokens`` passes through
as sent (gateway.api.passthrough): it counts the request without memories.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.answers import MessageReply
from gateway.api.outgoing import Json
from gateway.api.turns import TurnAPI, TurnRequest, serve_turn
from gateway.api.wire import Wire
from gateway.auth import PrincipalDep
from gateway.memory.prompt import last_user_text
from gateway.openapi import KEYED, NO_MODEL, UPSTREAM, WITH_BODY, errors, json_body, relayed
from gateway.services import ServicesDep
from gateway.upstream.replica import Call
from gateway.upstream.sse_apis import MessagesStream, message_text

router = APIRouter(responses=KEYED)
ROUTE = "/v1/messages"


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(TurnRequest):
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=2048)
    system: str | list[dict[str, Any]] | None = None
    metadata: dict[str, Any] | None = None


def latest_user_text(body: Json) -> str:
    return last_user_text(body["messages"])


def add_to_system(body: Json, block: str) -> Json:
    """``body`` with the memory block in its ``system`` prompt."""
    system = body.get("system")
    if isinstance(system, list):
        return {**body, "system": [*system, {"type": "text", "text": block}]}
    return {**body, "system": f"{system}\n\n{block}" if system else block}


def as_chat(body: Json) -> Json:
    """The request as a chat request, for the context budget: ``system`` first."""
    system = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    return {**body, "messages": [*system, *body["messages"]]}


MESSAGES = TurnAPI(
    MessagesRequest, Call("/messages"), "messages", latest_user_text, add_to_system, as_chat
)


def is_message(body: Json) -> bool:
    """An Anthropic message has its ``content`` blocks (a 200 without is no reply)."""
    return isinstance(body.get("content"), list)


MESSAGES_WIRE = Wire(ROUTE, MessagesStream, message_text, is_reply=is_message)


@router.post(
    ROUTE,
    response_model=MessageReply,
    openapi_extra=json_body(MessagesRequest),
    responses={**relayed("The LLM's message"), **WITH_BODY, **errors(NO_MODEL), **UPSTREAM},
)
async def create_message(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> Response:
    return await serve_turn(request, principal, services, MESSAGES, MESSAGES_WIRE)
