"""Which user a conversation's memory belongs to, for every API alike.

Chat Completions, the Responses API and Anthropic's Messages API each have
their own way of naming the end user, and the OpenAI SDK now marks ``user``
as replaced by ``safety_identifier``. The gateway reads all of them, in this
order, and the first one present names the memory user:

1. ``memory.user_id``: the gateway's own option (``extra_body`` in the SDKs),
   the most specific, so it wins over anything else;
2. ``safety_identifier``: what the OpenAI SDK recommends for a stable
   per-user id (Chat Completions and Responses);
3. ``user``: the older OpenAI field, still sent by many clients;
4. ``metadata.user_id``: Anthropic's Messages API field for the same thing.

A request that names none has no memory (nothing recalled, nothing stored),
and ``memory.enabled: false`` turns memory off whatever names the user.
Memory is scoped by tenant (the API key) and this id.
"""

from __future__ import annotations

from typing import Any

from gateway.api.relay import MemoryPlan
from gateway.api.schemas import MemoryOptions
from gateway.auth import Principal
from gateway.errors import APIError
from gateway.memory.records import Scope, check_text

MAX_USER_ID = 256


def _user_field(value: Any, param: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_USER_ID:
        raise APIError(
            400,
            f"{param}: must be a string of at most {MAX_USER_ID} characters",
            code="invalid_request",
            param=param,
        )
    # It names the scope that is searched and stored: text only, as for memory.user_id.
    if problem := check_text(value, param):
        raise APIError(400, problem, code="invalid_text", param=param)
    return value


def memory_user(body: dict[str, Any], options: MemoryOptions | None) -> str | None:
    """The memory user the request names (see the module's docstring), or None."""
    if options is not None and options.user_id:
        return options.user_id
    for name in ("safety_identifier", "user"):
        if (user := _user_field(body.get(name), name)) is not None:
            return user
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        return _user_field(metadata.get("user_id"), "metadata.user_id")
    return None


def plan_turn(
    body: dict[str, Any],
    options: MemoryOptions | None,
    query: str,
    principal: Principal,
    default_top_k: int,
    *,
    param: str,
) -> MemoryPlan:
    """What memory does for one conversation turn whose latest user text is
    ``query``, found in the body's field ``param`` (``default_top_k``: how many
    memories to recall unless the request says)."""
    user_id = memory_user(body, options)
    if not user_id or (options is not None and not options.enabled):
        return MemoryPlan()
    # The query is embedded and stored: it must be text (no lone surrogate).
    if problem := check_text(query, "the last user message"):
        raise APIError(400, problem, code="invalid_text", param=param)
    top_k = options.top_k if options and options.top_k is not None else None
    return MemoryPlan(
        scope=Scope(principal.tenant, user_id),
        top_k=default_top_k if top_k is None else top_k,
        store=options.store if options else True,
        session_id=options.session_id if options else None,
        query=query,
    )
