"""Admin endpoints (``GATEWAY_ADMIN_KEY``): across tenants, and the gateway's own state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from gateway.auth import AdminDep
from gateway.errors import unavailable
from gateway.memory.records import Scope
from gateway.memory.store import StoreUnavailable
from gateway.services import ServicesDep

router = APIRouter(prefix="/admin", tags=["admin"])

Name = Annotated[str, Path(min_length=1, max_length=256)]


def _store_down(exc: Exception) -> Exception:
    return unavailable(
        f"memory store unavailable: {exc}", code="store_unavailable", retry_after_s=2
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
        raise _store_down(exc) from None
    return {"tenant": tenant, "users": users}


@router.delete("/tenants/{tenant}/users/{user_id}")
async def forget_any_user(
    tenant: Name, user_id: Name, _: AdminDep, services: ServicesDep
) -> dict[str, Any]:
    """Forget a user of any tenant (queued writes included)."""
    try:
        deleted = await services.memory.forget(Scope(tenant, user_id))
    except StoreUnavailable as exc:
        raise _store_down(exc) from None
    return {"tenant": tenant, "user_id": user_id, "deleted": deleted}


@router.get("/outbox")
async def outbox(_: AdminDep, services: ServicesDep) -> dict[str, int]:
    return {"depth": services.outbox.depth, "dead": services.outbox.dead_count()}


@router.get("/upstreams")
async def upstreams(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    return {
        "status": services.pool.status(),
        "upstreams": [
            {
                "name": u.name,
                "url": u.base_url,
                "model": u.model,
                "breaker": u.breaker.state,
                **(u.monitor.state.to_json() if u.monitor else {}),
            }
            for u in services.pool.upstreams
        ],
    }
