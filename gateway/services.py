"""What the lifespan builds and the routers use, kept on ``app.state.services``.

A router takes the part it uses (``MemoryDep``, ``SettingsDep``) where one is
enough, the whole container (``ServicesDep``) where it needs several.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.datadir import DiskSpace
from gateway.drain import Drain
from gateway.memory.service import MemoryService
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.upstream.http import Timeouts
from gateway.upstream.owners import ResponseOwners
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.replicas import Replicas
from gateway.upstream.router import ModelRouter
from gateway.upstream.sync import RegistrySync

logger = logging.getLogger("gateway")


@dataclass
class Services:
    settings: Settings
    metrics: GatewayMetrics
    replicas: Replicas  # every LLM replica, with its health (changed by the router only)
    pool: UpstreamPool
    router: ModelRouter
    registrations: RegistrySync
    memory: MemoryService  # with the embedder, the vector store, their monitors and the outbox
    upstream_timeout: Timeouts
    stream_timeout: Timeouts
    drain: Drain  # the shutdown grace of the answers in flight
    disk: DiskSpace | None = None  # the data dir's free space (outbox, Edge store)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    # Which tenant and replica made each Responses API response (gateway.api.responses).
    response_owners: ResponseOwners = field(default_factory=ResponseOwners)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run work after the response; shutdown waits for it (see the lifespan)."""
        task = asyncio.create_task(coro, name=name)
        self.background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed: %r", task.get_name(), task.exception())


async def get_services(request: Request) -> Services:
    # async: a plain def dependency would run in the threadpool on every request.
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_memory(request: Request) -> MemoryService:
    memory: MemoryService = request.app.state.services.memory
    return memory


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


MemoryDep = Annotated[MemoryService, Depends(get_memory)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.services.drain
    return drain


DrainDep = Annotated[Drain, Depends(get_drain)]
