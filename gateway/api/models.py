"""``GET /v1/models``: every routable model and alias, with its upstream's state."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.api.answers import ModelList
from gateway.auth import PrincipalDep
from gateway.openapi import KEYED
from gateway.services import ServicesDep

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses=KEYED)
async def list_models(_: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """OpenAI's list shape; each item also says which upstream serves it and its
    state (healthy, starting, unavailable), from the health monitors, without a
    call to any upstream.

    Written as built rather than through ``ModelList``: a model an upstream
    lists keeps its own fields, in its own order.
    """
    return JSONResponse({"object": "list", "data": services.router.listing()})
