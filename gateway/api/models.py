"""``GET /v1/models``: every routable model and alias, with its upstream's state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.auth import PrincipalDep
from gateway.services import ServicesDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(_: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """OpenAI's list shape; each item also says which upstream serves it and its
    state (healthy, starting, unavailable), from the health monitors, without a
    call to any upstream."""
    return {"object": "list", "data": services.router.listing()}
