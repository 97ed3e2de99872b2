"""Probes for Docker and Kubernetes, and the Prometheus endpoint.

Both probes read state the monitors keep; neither ever calls a dependency,
so they answer at once even when everything behind the gateway is dead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.services import ServicesDep

router = APIRouter(include_in_schema=False)


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process and its event loop are alive (this coroutine ran)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the store and the embedder are usable and one LLM upstream is healthy."""
    upstreams = services.pool.describe()
    llm = services.pool.status()
    checks: dict[str, Any] = {
        "llm": {"status": llm, "upstreams": upstreams},
        "embedder": services.embedder_monitor.state.to_json(),
        "vector_store": {
            **services.store_monitor.state.to_json(),
            "backend": services.memory.store.name,
        },
        "outbox": {"depth": services.outbox.depth},
    }
    if services.disk is not None:
        problem = services.disk.problem()
        checks["data_dir"] = {"status": "low" if problem else "ok", "error": problem}
    ready = (
        llm == "healthy"
        and services.embedder_monitor.healthy
        and services.store_monitor.healthy
        and checks.get("data_dir", {}).get("status") != "low"
    )
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics_endpoint(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
