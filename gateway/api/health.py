"""Probes for Docker and Kubernetes, and the Prometheus endpoint.

Both probes read state the monitors keep; neither ever calls a dependency,
so they answer at once even when everything behind the gateway is dead.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.answers import (
    Checks,
    DiskCheck,
    Liveness,
    LlmCheck,
    MonitorState,
    OutboxCheck,
    ReadinessReport,
    StoreCheck,
)
from gateway.auth import is_admin_request
from gateway.enums import DiskStatus, Readiness
from gateway.services import ServicesDep
from gateway.upstream.replicas import redacted_state

router = APIRouter(tags=["health"], default_response_class=JSONResponse)


@router.get(
    "/livez",
    response_model=Liveness,
    responses={503: {"model": Liveness, "description": "The outbox's file was removed"}},
)
async def livez(response: Response, services: ServicesDep) -> Liveness:
    """The process and its event loop are alive (this coroutine ran), and its
    outbox's file is still the data dir's: SQLite goes on writing to a file
    removed under it, every write lost at the next start, and only a restart
    opens the data dir again."""
    if services.memory.outbox_lost() is not None:
        response.status_code = 503
        return Liveness(status="failed")
    return Liveness(status="ok")


# Each check holds the keys it was given: the operator's detail, or the status only.
@router.get(
    "/readyz",
    response_model=ReadinessReport,
    response_model_exclude_unset=True,
    response_description="Ready",
    responses={503: {"model": ReadinessReport, "description": "Not ready: see the checks"}},
)
async def readyz(request: Request, response: Response, services: ServicesDep) -> ReadinessReport:
    """200 when one LLM upstream is healthy and the data dir usable: ``ready`` when
    the store and the embedder are usable too, ``degraded`` when they are not and
    memory is optional (chat is answered without it, as every gateway sharing that
    embedder or store would answer it: taking them all out of a load balancer's
    rotation would turn a memory outage into a chat outage). With
    ``GATEWAY_MEMORY_REQUIRED`` a memory outage is a 503, as chat's answers are.

    Open to anyone (probes send no key), so it says only each dependency's
    status. The detail (each upstream's URL, models, breaker and last error,
    the outbox depth) is for the operator: sent with the admin key, or when no
    keys are configured at all (then ``/admin`` is open too).
    """
    llm = services.replicas.status()
    memory = services.memory.status()
    lost = services.memory.outbox_lost()
    disk_problem = lost or (services.disk.problem() if services.disk is not None else None)
    serving = llm == "healthy" and disk_problem is None
    if serving and memory.ready:
        readiness = Readiness.READY
    elif serving and not services.settings.memory_required:
        readiness = Readiness.DEGRADED
    else:
        readiness = Readiness.NOT_READY
    admin = is_admin_request(request)
    if admin:
        checks = Checks(
            llm=LlmCheck.model_validate({"status": llm, "upstreams": services.replicas.describe()}),
            embedder=MonitorState.model_validate(redacted_state(memory.embedder)),
            vector_store=StoreCheck.model_validate(
                {**redacted_state(memory.store), "backend": memory.backend}
            ),
            outbox=OutboxCheck(depth=memory.outbox_depth),
        )
    else:
        checks = Checks(
            llm=LlmCheck(status=llm),
            embedder=MonitorState(status=memory.embedder.state.status),
            vector_store=StoreCheck(status=memory.store.state.status, backend=memory.backend),
        )
    if services.disk is not None:
        disk = DiskStatus.LOST if lost else DiskStatus.LOW if disk_problem else DiskStatus.OK
        # The detail says why (the path and the space it needs).
        checks.data_dir = (
            DiskCheck(status=disk, error=disk_problem) if admin else DiskCheck(status=disk)
        )
    response.status_code = 503 if readiness is Readiness.NOT_READY else 200
    return ReadinessReport(status=readiness, checks=checks)


# Prometheus' text format, documented by Prometheus: not part of the JSON API's document.
# HEAD too, for load balancers' health checks (the status is the answer); not in
# the schema, where it would repeat GET's operation.
router.add_api_route("/livez", livez, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
