"""Admin endpoints (``GATEWAY_ADMIN_KEY``): across tenants, and the gateway's own state."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from gateway.auth import AdminDep
from gateway.enums import RouteSource
from gateway.errors import APIError, store_unavailable, unavailable
from gateway.memory.records import Scope
from gateway.memory.store import StoreUnavailable
from gateway.services import Services, ServicesDep
from gateway.upstream.registry import Registration, RegistryUnavailable
from gateway.upstream.replicas import status_of
from gateway.urls import redact_url

router = APIRouter(prefix="/admin", tags=["admin"])

Name = Annotated[str, Path(min_length=1, max_length=256)]


def _registry_down(exc: Exception) -> Exception:
    return unavailable(
        f"model registry unavailable: {exc}", code="registry_unavailable", retry_after_s=2
    )


@router.get("/tenants/{tenant}/users")
async def tenant_users(
    tenant: Name,
    _: AdminDep,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The users of a tenant that have memories."""
    try:
        users = await services.memory.store.users(tenant, limit)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    return {"tenant": tenant, "users": users}


@router.delete("/tenants/{tenant}/users/{user_id}")
async def forget_any_user(
    tenant: Name, user_id: Name, _: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    """Forget a user of any tenant (queued writes included)."""
    try:
        deleted = await services.memory.forget(Scope(tenant, user_id))
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from None
    return {"tenant": tenant, "user_id": user_id, "deleted": deleted}


@router.get("/outbox")
async def outbox(
    _: AdminDep, services: ServicesDep, limit: Annotated[int, Query(ge=0, le=1000)] = 100
) -> dict[str, Any]:
    """Writes waiting, and those set aside because they can never be stored
    (``dead``: how many; ``dead_entries``: the latest, with their reasons)."""
    entries = await asyncio.to_thread(services.outbox.dead_entries, limit)
    return {
        "depth": services.outbox.depth,
        "dead": await asyncio.to_thread(services.outbox.dead_count),
        "dead_entries": [entry.to_json() for entry in entries],
    }


@router.get("/upstreams")
async def upstreams(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    return {"status": services.replicas.status(), "upstreams": services.replicas.describe()}


# What a model name looks like (``Qwen/Qwen2.5-7B-Instruct``, ``llama3:8b``,
# ``qwen-vl-2b``): no spaces, quotes or control characters, so an alias can be
# written in a URL path, a log line and a shell command as it is.
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
MAX_ALIAS_CHARS = 128


class RegisterModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=MAX_ALIAS_CHARS, pattern=ALIAS_PATTERN)
    upstream_url: AnyHttpUrl
    # The upstream's own name for the model: anything printable.
    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
    api_key: str | None = Field(default=None, min_length=1, max_length=4096)


def _registration_view(services: Services, alias: str) -> dict[str, Any]:
    route = services.router.aliases[alias]
    replicas = services.replicas.group(route.upstream)
    return {
        "alias": alias,
        "model": route.model,
        "upstream": route.upstream,
        "upstream_url": redact_url(replicas[0].base_url) if replicas else None,
        "state": status_of(replicas),
        "source": route.source,
    }


@router.post("/models", status_code=201)
async def register_model(
    request: RegisterModel, _: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    """Route ``alias`` to ``model`` on the server at ``upstream_url``.

    The server is probed at once (gateway.upstream.sync): the answer says
    whether it is serving (``healthy``) or not yet (``starting``: it is
    registered all the same, and the health monitor brings it in when it answers).
    """
    router = services.router
    existing = router.aliases.get(request.alias)
    if existing is not None and existing.source != RouteSource.REGISTERED:
        raise APIError(
            409, f"alias {request.alias!r} is set in GATEWAY_CONFIG", code="alias_configured"
        )
    registration = Registration(
        request.alias, str(request.upstream_url).rstrip("/"), request.model, request.api_key
    )
    try:
        await services.registrations.register(registration)
    except RegistryUnavailable as exc:
        raise _registry_down(exc) from None
    if request.alias not in router.aliases:  # another gateway deleted it meanwhile
        raise APIError(409, f"alias {request.alias!r} was deleted meanwhile", code="alias_deleted")
    return _registration_view(services, request.alias)


@router.get("/models")
async def registered_models(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """Every alias, configured or registered."""
    return {
        "data": [_registration_view(services, alias) for alias in sorted(services.router.aliases)]
    }


@router.delete("/models/{alias:path}")
async def delete_model(
    alias: str, request: Request, _: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    """Unregister an alias, here and in the store every gateway reads."""
    if not request.scope["path"].endswith(f"/models/{alias}"):
        # The path held a line break that route matching dropped ("a%0A" reads as
        # "a"): never delete another alias than the one named.
        raise APIError(
            400, "this alias cannot be named in a path: use DELETE /admin/models?alias=",
            code="invalid_alias", param="alias",
        )  # fmt: skip
    return await _unregister(services, alias)


@router.delete("/models")
async def delete_model_by_query(
    _: AdminDep, services: ServicesDep, alias: Annotated[str, Query(min_length=1)]
) -> dict[str, Any]:
    """The same, for an alias no URL path can carry (a newline in it: registered
    before aliases were validated). Percent-encode it: ``?alias=bad%0Aname``."""
    return await _unregister(services, alias)


async def _unregister(services: Services, alias: str) -> dict[str, Any]:
    route = services.router.aliases.get(alias)
    if route is not None and route.source != RouteSource.REGISTERED:
        raise APIError(409, f"alias {alias!r} is set in GATEWAY_CONFIG", code="alias_configured")
    try:
        deleted = await services.registrations.unregister(alias)
    except RegistryUnavailable as exc:
        raise _registry_down(exc) from None
    if not deleted:
        raise APIError(404, f"no model alias {alias!r}", code="alias_not_found")
    return {"alias": alias, "deleted": True}
