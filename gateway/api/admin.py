"""Admin endpoints (``GATEWAY_ADMIN_KEY``): across tenants, and the gateway's own state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from gateway.api.answers import (
    DeadWrite,
    DeletedAlias,
    ForgottenTenantUser,
    OutboxStatus,
    RegisteredModel,
    RegisteredModels,
    TenantUsers,
    UpstreamsStatus,
)
from gateway.api.query import SingleQueryRoute
from gateway.auth import AdminDep
from gateway.errors import APIError
from gateway.exceptions import RegistryUnavailable, StoreUnavailable
from gateway.memory.records import Scope
from gateway.openapi import WITH_BODY, errors, keyed_router
from gateway.secret_strength import sendable_key
from gateway.services import MemoryDep, Services, ServicesDep
from gateway.upstream.config import ALIAS_PATTERN, MAX_ALIAS_CHARS
from gateway.upstream.registry import Registration
from gateway.upstream.replicas import status_of
from gateway.urls import redact_url

router = keyed_router("/admin", "admin", SingleQueryRoute)

Name = Annotated[str, Path(min_length=1, max_length=256)]


@router.get(
    "/tenants/{tenant}/users", response_model=TenantUsers, responses=errors(400, StoreUnavailable)
)
async def tenant_users(
    tenant: Name,
    _: AdminDep,
    memory: MemoryDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> TenantUsers:
    """The users of a tenant that have memories."""
    users = await memory.users(tenant, limit)
    return TenantUsers(tenant=tenant, users=users)


@router.delete(
    "/tenants/{tenant}/users/{user_id}",
    response_model=ForgottenTenantUser,
    responses=errors(400, StoreUnavailable),
)
async def forget_any_user(
    tenant: Name, user_id: Name, _: AdminDep, memory: MemoryDep
) -> ForgottenTenantUser:
    """Forget a user of any tenant (queued writes included)."""
    deleted = await memory.forget(Scope(tenant, user_id))
    return ForgottenTenantUser(tenant=tenant, user_id=user_id, deleted=deleted)


@router.delete(
    "/tenants/{tenant}/users",
    response_model=ForgottenTenantUser,
    responses=errors(400, StoreUnavailable),
)
async def forget_any_user_by_query(
    tenant: Name,
    user_id: Annotated[str, Query(min_length=1, max_length=256)],
    admin: AdminDep,
    memory: MemoryDep,
) -> ForgottenTenantUser:
    """The same, for any user id: one that holds ``/`` or is ``.`` or ``..`` cannot be
    a path segment (the server decodes ``%2F`` and resolves dot segments first)."""
    return await forget_any_user(tenant, user_id, admin, memory)


@router.get("/outbox", response_model=OutboxStatus, responses=errors(400))
async def outbox(
    _: AdminDep, memory: MemoryDep, limit: Annotated[int, Query(ge=0, le=1000)] = 100
) -> OutboxStatus:
    """Writes waiting, and those set aside because they can never be stored
    (``dead``: how many; ``dead_entries``: the latest, with their reasons)."""
    report = await memory.outbox_report(limit)
    return OutboxStatus(
        depth=report.depth,
        dead=report.dead,
        dead_entries=[DeadWrite.model_validate(entry.to_json()) for entry in report.dead_entries],
    )


@router.get("/upstreams", response_model=UpstreamsStatus)
async def upstreams(_: AdminDep, services: ServicesDep) -> UpstreamsStatus:
    return UpstreamsStatus.model_validate(
        {"status": services.replicas.status(), "upstreams": services.replicas.describe()}
    )


class RegisterModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=MAX_ALIAS_CHARS, pattern=ALIAS_PATTERN)
    upstream_url: AnyHttpUrl
    # The upstream's own name for the model: anything printable.
    model: str = Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
    api_key: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("api_key")
    @classmethod
    def _sendable(cls, key: str | None) -> str | None:
        # Stored with a line break, it failed every request and was kept as "unavailable".
        return sendable_key(key) if key is not None else None


def _registration_view(services: Services, alias: str) -> RegisteredModel:
    route = services.router.aliases[alias]
    replicas = services.replicas.group(route.upstream)
    return RegisteredModel(
        alias=alias,
        model=route.model,
        upstream=route.upstream,
        upstream_url=redact_url(replicas[0].base_url) if replicas else None,
        state=status_of(replicas),
        source=route.source,
    )


CONFIGURED = (409, "The alias is set in GATEWAY_CONFIG (or was deleted meanwhile)")
REGISTRY_DOWN = RegistryUnavailable


@router.post(
    "/models",
    status_code=201,
    response_model=RegisteredModel,
    responses={**WITH_BODY, **errors(CONFIGURED, REGISTRY_DOWN)},
)
async def register_model(
    request: RegisterModel, _: AdminDep, services: ServicesDep
) -> RegisteredModel:
    """Route ``alias`` to ``model`` on the server at ``upstream_url``.

    The server is probed at once (gateway.upstream.sync): the answer says
    whether it is serving (``healthy``) or not yet (``starting``: it is
    registered all the same, and the health monitor brings it in when it answers).
    """
    router = services.router
    _not_configured(services, request.alias)
    registration = Registration(
        request.alias, str(request.upstream_url).rstrip("/"), request.model, request.api_key
    )
    await services.registrations.register(registration)
    if request.alias not in router.aliases:  # another gateway deleted it meanwhile
        raise APIError(409, f"alias {request.alias!r} was deleted meanwhile", code="alias_deleted")
    return _registration_view(services, request.alias)


@router.get("/models", response_model=RegisteredModels)
async def registered_models(_: AdminDep, services: ServicesDep) -> RegisteredModels:
    """Every alias, configured or registered."""
    aliases = sorted(services.router.aliases)
    return RegisteredModels(data=[_registration_view(services, alias) for alias in aliases])


UNREGISTERED = errors(400, (404, "No such alias"), CONFIGURED, REGISTRY_DOWN)


@router.delete("/models/{alias:path}", response_model=DeletedAlias, responses=UNREGISTERED)
async def delete_model(
    alias: str, request: Request, _: AdminDep, services: ServicesDep
) -> DeletedAlias:
    """Unregister an alias, here and in the store every gateway reads."""
    if not request.scope["path"].endswith(f"/models/{alias}"):
        # The path held a line break that route matching dropped ("a%0A" reads as
        # "a"): never delete another alias than the one named.
        raise APIError(
            400, "this alias cannot be named in a path: use DELETE /admin/models?alias=",
            code="invalid_alias", param="alias",
        )  # fmt: skip
    return await _unregister(services, alias)


@router.delete("/models", response_model=DeletedAlias, responses=UNREGISTERED)
async def delete_model_by_query(
    _: AdminDep, services: ServicesDep, alias: Annotated[str, Query(min_length=1)]
) -> DeletedAlias:
    """The same, for an alias no URL path can carry (a newline in it: registered
    before aliases were validated). Percent-encode it: ``?alias=bad%0Aname``."""
    return await _unregister(services, alias)


def _not_configured(services: Services, alias: str) -> None:
    """409 for an alias ``GATEWAY_CONFIG`` sets: only the file changes it."""
    if services.router.configured(alias):
        raise APIError(409, f"alias {alias!r} is set in GATEWAY_CONFIG", code="alias_configured")


async def _unregister(services: Services, alias: str) -> DeletedAlias:
    _not_configured(services, alias)
    deleted = await services.registrations.unregister(alias)
    if not deleted:
        raise APIError(404, f"no model alias {alias!r}", code="alias_not_found")
    return DeletedAlias(alias=alias, deleted=True)
