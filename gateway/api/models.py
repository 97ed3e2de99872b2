"""``GET /v1/models`` and ``GET /v1/models/{model}``: every routable model and
alias, with its upstream's state, from the gateway's own routing (no call to
any upstream)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.api.answers import ModelCard, ModelList
from gateway.auth import PrincipalDep
from gateway.exceptions import UnknownModel
from gateway.openapi import KEYED, NO_MODEL, errors
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


@router.get(
    "/v1/models/{model:path}", response_model=ModelCard, responses={**KEYED, **errors(NO_MODEL)}
)
async def retrieve_model(model: str, _: PrincipalDep, services: ServicesDep) -> JSONResponse:
    """One item of the list (OpenAI's ``models.retrieve``), aliases included;
    404 ``model_not_found`` for a name nothing here serves. The gateway answers
    it, since an upstream knows neither the aliases nor the other upstreams'
    models. A model id may hold slashes (``org/model``)."""
    listing = services.router.listing()
    for item in listing:
        if item["id"] == model:
            return JSONResponse(item)
    raise UnknownModel(model, [str(item["id"]) for item in listing])
