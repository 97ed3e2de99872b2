"""The memory REST API: add, search, list, get, delete, forget a user."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query, Response

from gateway.api.answers import (
    AddedMemories,
    AddedMemory,
    DeletedMemory,
    ForgottenUser,
    Memory,
    MemoryPage,
    ScoredMemory,
    SearchResults,
)
from gateway.api.query import SingleQueryRoute
from gateway.api.schemas import AddMemoriesRequest, SearchMemoriesRequest
from gateway.auth import PrincipalDep
from gateway.drain import until_cut
from gateway.enums import WriteSource
from gateway.errors import APIError
from gateway.exceptions import MemoryUnavailable, OutboxFull, OutboxUnavailable, StoreUnavailable
from gateway.memory.records import (
    NewMemory,
    Scope,
    check_metadata,
    parse_filters,
    parse_timestamp,
)
from gateway.openapi import WITH_BODY, errors, keyed_router
from gateway.services import DrainDep, MemoryDep, SettingsDep

# A query parameter given twice is refused (gateway.api.query), never half read.
router = keyed_router("/v1/memories", "memories", SingleQueryRoute)
NOT_FOUND = (404, "No such memory in the caller's tenant (or not the user's, with user_id)")

UserIdQuery = Annotated[str, Query(min_length=1, max_length=256)]


def _not_found(memory_id: str) -> APIError:
    return APIError(404, f"memory {memory_id} not found", code="memory_not_found")


def _cursor(value: str) -> str:
    """A page's start: a ``next_cursor`` an earlier page gave (a memory's id)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise APIError(
            400,
            "cursor must be the next_cursor of an earlier page",
            code="invalid_cursor",
            param="cursor",
        ) from None


def _memory_id(value: str) -> str:
    if value == "search":  # ``GET /v1/memories/search``: the route is there, its method is not
        raise APIError(405, "Method Not Allowed", code="method_not_allowed",
                       headers={"Allow": "POST"})  # fmt: skip
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise APIError(400, "memory id must be a UUID", code="invalid_memory_id") from None


@router.post(
    "",
    status_code=201,
    response_model=AddedMemories,
    response_model_exclude_defaults=True,
    response_description="Stored (and searchable)",
    responses={
        202: {
            "model": AddedMemories,
            "description": "Accepted into the durable outbox (the embedder or the store is "
            "down); stored when they are back",
        },
        **WITH_BODY,
        **errors(OutboxFull, OutboxUnavailable),
    },
)
async def add_memories(
    principal: PrincipalDep,
    memory: MemoryDep,
    drain: DrainDep,
    settings: SettingsDep,
    request: AddMemoriesRequest,
    response: Response,
) -> AddedMemories:
    """One memory per message (one embedder call for all), or one for ``text``.

    201 when stored (and searchable); 202 when accepted into the durable
    outbox because a dependency is down (the ids are final either way). A
    write waits briefly for the same user's queued writes, never for other
    users'. ``results`` has one entry per message, in order; repeating a text
    the user already has (or one earlier in the same batch) is event ``NONE``
    with the existing id. 400 for what could never be stored; 507 when the disk is full.
    """
    if (request.messages is None) == (request.text is None):
        raise APIError(400, "give exactly one of 'messages' or 'text'", code="invalid_request")
    try:
        created = parse_timestamp(request.timestamp, datetime.now(UTC))
    except ValueError:
        raise APIError(
            400,
            "timestamp must be an ISO 8601 time between the years 1 and 9999 in UTC",
            code="invalid_timestamp",
            param="timestamp",
        ) from None
    metadata = request.metadata or {}
    problem = check_metadata(metadata, settings.max_metadata_bytes)
    if problem:
        raise APIError(400, problem, code="invalid_metadata", param="metadata")
    items = (
        [(m.role, m.content) for m in request.messages]
        if request.messages is not None
        else [(None, request.text or "")]
    )
    memories = [
        NewMemory(text, created, metadata, request.session_id, role, WriteSource.API)
        for role, text in items
    ]
    scope = Scope(principal.tenant, request.user_id)
    outcome = await until_cut(drain, memory.add(scope, memories))
    if outcome.queued:
        response.status_code = 202
    results = [AddedMemory(id=r.id, memory=r.memory, event=r.event) for r in outcome.results]
    return AddedMemories(results=results, queued=outcome.queued)


@router.post(
    "/search", response_model=SearchResults, responses={**WITH_BODY, **errors(MemoryUnavailable)}
)
async def search_memories(
    principal: PrincipalDep,
    memory: MemoryDep,
    drain: DrainDep,
    request: SearchMemoriesRequest,
) -> SearchResults:
    try:
        conditions = parse_filters(request.filters)
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_filters", param="filters") from None
    scope = Scope(principal.tenant, request.user_id)
    searching = memory.search(scope, request.query, request.top_k, conditions, request.min_score)
    records = await until_cut(drain, searching)
    return SearchResults(results=[ScoredMemory.of(record) for record in records])


@router.get("", response_model=MemoryPage, responses=errors(400, StoreUnavailable))
async def list_memories(
    principal: PrincipalDep,
    memory: MemoryDep,
    drain: DrainDep,
    user_id: UserIdQuery,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> MemoryPage:
    """A page of the user's memories; pass ``next_cursor`` back for the next page."""
    scope = Scope(principal.tenant, user_id)
    start = _cursor(cursor) if cursor else None
    records, next_cursor = await until_cut(drain, memory.page(scope, limit, start))
    return MemoryPage(results=[Memory.of(r) for r in records], next_cursor=next_cursor)


OptionalUserId = Annotated[str | None, Query(min_length=1, max_length=256)]


BY_ID = errors(400, NOT_FOUND, StoreUnavailable)


@router.get("/{memory_id}", response_model=Memory, responses=BY_ID)
async def get_memory(
    principal: PrincipalDep, memory: MemoryDep, memory_id: str, user_id: OptionalUserId = None
) -> Memory:
    """A memory of the caller's tenant, stored or still queued (answered 202);
    with ``user_id``, only if it is that user's."""
    record = await memory.get(principal.tenant, _memory_id(memory_id), user_id)
    if record is None:
        raise _not_found(memory_id)
    return Memory.of(record)


@router.delete(
    "/{memory_id}",
    response_model=DeletedMemory,
    responses={**BY_ID, **errors(OutboxFull, OutboxUnavailable)},
)
async def delete_memory(
    principal: PrincipalDep, memory: MemoryDep, memory_id: str, user_id: OptionalUserId = None
) -> DeletedMemory:
    """Delete a memory of the caller's tenant, stored or still queued (a replay
    never brings it back); with ``user_id``, only if it is that user's."""
    key = _memory_id(memory_id)
    if not await memory.delete(principal.tenant, key, user_id):
        raise _not_found(memory_id)
    return DeletedMemory(id=key, deleted=True)


@router.delete(
    "",
    response_model=ForgottenUser,
    responses=errors(400, StoreUnavailable, OutboxFull, OutboxUnavailable),
)
async def forget_user(
    principal: PrincipalDep,
    memory: MemoryDep,
    user_id: UserIdQuery,
) -> ForgottenUser:
    """Forget a user: every memory of theirs in the caller's tenant."""
    deleted = await memory.forget(Scope(principal.tenant, user_id))
    return ForgottenUser(user_id=user_id, deleted=deleted)
