"""The memory REST API: add, search, list, get, delete, forget a user."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from gateway.api.schemas import AddMemoriesRequest, SearchMemoriesRequest
from gateway.auth import PrincipalDep
from gateway.enums import WriteSource
from gateway.errors import APIError, store_unavailable, unavailable
from gateway.memory.embedder_client import EmbedderRejected
from gateway.memory.records import (
    MemoryRecord,
    NewMemory,
    Scope,
    check_metadata,
    parse_filters,
    parse_timestamp,
)
from gateway.memory.service import MemoryRejected, MemoryUnavailable, OutboxFull
from gateway.memory.store import StoreUnavailable
from gateway.services import Services, ServicesDep

router = APIRouter(prefix="/v1/memories", tags=["memories"])

UserIdQuery = Annotated[str, Query(min_length=1, max_length=256)]


def _not_found(memory_id: str) -> APIError:
    return APIError(404, f"memory {memory_id} not found", code="memory_not_found")


def _memory_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise APIError(400, "memory id must be a UUID", code="invalid_memory_id") from None


@router.post(
    "",
    status_code=201,
    responses={
        202: {
            "description": "Accepted into the durable outbox (the embedder or the store is "
            "down); stored when they are back"
        },
        507: {"description": "The data dir's disk is full: the write was not accepted"},
    },
)
async def add_memories(
    principal: PrincipalDep,
    services: ServicesDep,
    request: AddMemoriesRequest,
) -> JSONResponse:
    """One memory per message (one embedder call for all), or one for ``text``.

    201 when stored (and searchable); 202 when accepted into the durable
    outbox because a dependency is down (the ids are final either way). A
    write waits briefly for the same user's queued writes, never for other
    users'. Repeating a text the user already has is event ``NONE`` with the
    existing id. 400 for what could never be stored; 507 when the disk is full.
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
    problem = check_metadata(metadata, services.settings.max_metadata_bytes)
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
    try:
        outcome = await services.memory.add(scope, memories)
    except EmbedderRejected as exc:
        raise APIError(400, f"the embedder rejected the text: {exc}", code="invalid_text") from None
    except MemoryRejected as exc:
        raise APIError(400, f"this memory cannot be stored: {exc}", code="unstorable") from None
    except OutboxFull as exc:
        raise APIError(
            507, f"{exc}; free space under the data dir", code="insufficient_storage"
        ) from None
    body: dict[str, Any] = {
        "results": [{"id": r.id, "memory": r.memory, "event": r.event} for r in outcome.results]
    }
    if outcome.queued:
        body["queued"] = True
    return JSONResponse(body, status_code=202 if outcome.queued else 201)


@router.post("/search")
async def search_memories(
    principal: PrincipalDep,
    services: ServicesDep,
    request: SearchMemoriesRequest,
) -> dict[str, Any]:
    try:
        conditions = parse_filters(request.filters)
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_filters", param="filters") from None
    scope = Scope(principal.tenant, request.user_id)
    try:
        records = await services.memory.search(
            scope, request.query, request.top_k, conditions, request.min_score
        )
    except MemoryUnavailable as exc:
        raise unavailable(
            f"memory search unavailable: {exc}", code="memory_unavailable", retry_after_s=2
        ) from None
    return {"results": [record.to_api() for record in records]}


@router.get("")
async def list_memories(
    principal: PrincipalDep,
    services: ServicesDep,
    user_id: UserIdQuery,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """A page of the user's memories; pass ``next_cursor`` back for the next page."""
    scope = Scope(principal.tenant, user_id)
    start = _memory_id(cursor) if cursor else None
    try:
        records, next_cursor = await services.memory.store.list(scope, limit, start)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    return {"results": [r.to_api() for r in records], "next_cursor": next_cursor}


OptionalUserId = Annotated[str | None, Query(min_length=1, max_length=256)]


async def _owned(
    services: Services, tenant: str, memory_id: str, user_id: str | None
) -> MemoryRecord:
    """The memory, if the caller's tenant (and ``user_id``, when given) owns it; else 404."""
    key = _memory_id(memory_id)
    try:
        record = await services.memory.store.get(tenant, key)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    if record is None or (user_id is not None and record.user_id != user_id):
        raise _not_found(memory_id)
    return record


@router.get("/{memory_id}")
async def get_memory(
    principal: PrincipalDep, services: ServicesDep, memory_id: str, user_id: OptionalUserId = None
) -> dict[str, Any]:
    """A memory of the caller's tenant; with ``user_id``, only if it is that user's."""
    record = await _owned(services, principal.tenant, memory_id, user_id)
    return record.to_api()


@router.delete("/{memory_id}")
async def delete_memory(
    principal: PrincipalDep, services: ServicesDep, memory_id: str, user_id: OptionalUserId = None
) -> dict[str, Any]:
    record = await _owned(services, principal.tenant, memory_id, user_id)
    try:
        await services.memory.store.delete(Scope(principal.tenant, record.user_id), record.id)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    return {"id": record.id, "deleted": True}


@router.delete("")
async def forget_user(
    principal: PrincipalDep,
    services: ServicesDep,
    user_id: UserIdQuery,
) -> dict[str, Any]:
    """Forget a user: every memory of theirs in the caller's tenant."""
    try:
        deleted = await services.memory.forget(Scope(principal.tenant, user_id))
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    return {"user_id": user_id, "deleted": deleted}
