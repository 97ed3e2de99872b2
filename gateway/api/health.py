"""Probes for Docker and Kubernetes, and the Prometheus endpoint.

Both probes read state the monitors keep; neither ever calls a dependency,
so they answer at once even when everything behind the gateway is dead.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auth import is_admin_request
from gateway.services import ServicesDep
from gateway.upstream.replicas import redacted_state

router = APIRouter(include_in_schema=False)


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process and its event loop are alive (this coroutine ran)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """200 when the store and the embedder are usable and one LLM upstream is healthy.

    Open to anyone (probes send no key), so it says only each dependency's
    status. The detail (each upstream's URL, models, breaker and last error,
    the outbox depth) is for the operator: sent with the admin key, or when no
    keys are configured at all (then ``/admin`` is open too).
    """
    llm = services.replicas.status()
    embedder = services.embedder_monitor.state
    store = services.store_monitor.state
    disk_problem = services.disk.problem() if services.disk is not None else None
    ready = (
        llm == "healthy"
        and services.embedder_monitor.healthy
        and services.store_monitor.healthy
        and disk_problem is None
    )
    checks: dict[str, Any]
    if is_admin_request(request):
        checks = {
            "llm": {"status": llm, "upstreams": services.replicas.describe()},
            "embedder": redacted_state(services.embedder_monitor),
            "vector_store": {
                **redacted_state(services.store_monitor),
                "backend": services.memory.store.name,
            },
            "outbox": {"depth": services.outbox.depth},
        }
    else:
        checks = {
            "llm": {"status": llm},
            "embedder": {"status": embedder.status},
            "vector_store": {"status": store.status, "backend": services.memory.store.name},
        }
    if services.disk is not None:
        checks["data_dir"] = {"status": "low" if disk_problem else "ok"}
        if "outbox" in checks:  # the detail: why (the path and the space it needs)
            checks["data_dir"]["error"] = disk_problem
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics_endpoint(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
