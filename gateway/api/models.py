"""``GET /v1/models``: what the upstreams serve."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter

from gateway.auth import PrincipalDep
from gateway.errors import unavailable
from gateway.services import ServicesDep

router = APIRouter()


@router.get("/v1/models")
async def list_models(
    _: PrincipalDep,
    services: ServicesDep,
) -> dict[str, Any]:
    """The union of the healthy upstreams' models, each tagged with its upstream."""
    seen: dict[str, dict[str, Any]] = {}
    for upstream in services.pool.upstreams:
        if not upstream.healthy:
            continue
        try:
            response = await upstream.get_models()
            data = response.json().get("data", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
        for model in data:
            if isinstance(model, dict) and isinstance(model.get("id"), str):
                seen.setdefault(model["id"], {**model, "upstream": upstream.name})
    if not seen and services.pool.status() != "healthy":
        raise unavailable(
            "no LLM upstream is available to list models",
            code=f"llm_{services.pool.status()}",
            retry_after_s=2,
        )
    return {"object": "list", "data": list(seen.values())}
