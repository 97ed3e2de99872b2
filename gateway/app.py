"""``create_app(settings)``: the gateway's ASGI app; the lifespan builds its clients.

Start-up is sequential and observable: open the outbox, open the vector
store (a dimension conflict stops start-up with a clear error), build the
HTTP clients, probe each dependency once so the first ``/readyz`` is real,
then start the monitors and the outbox replayer. No dependency has to be up
for the gateway to start: a missing LLM or embedder is reported and
reconnected to in the background.

Shutdown: stop taking work, wait (bounded) for background memory writes,
stop monitors, close clients, flush the store. Queued writes stay in the
outbox and are replayed at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from gateway.api import admin, chat, health, memories, messages, models, passthrough, responses
from gateway.auth import KeyCheck, KeyRing
from gateway.datadir import MIB, DiskSpace
from gateway.drain import Drain
from gateway.enums import Health
from gateway.errors import install_error_handlers
from gateway.limits import RequestLimits, tenant_share
from gateway.memory.edge_store import EdgeStore
from gateway.memory.embedder_client import EmbedderClient
from gateway.memory.outbox import OUTBOX_FILE, Outbox
from gateway.memory.service import MemoryService
from gateway.memory.store import VectorStore
from gateway.metrics import GatewayMetrics
from gateway.monitor import Monitor
from gateway.observability import RequestContextMiddleware
from gateway.services import Services
from gateway.settings import Settings
from gateway.startup_failure import OneLineStartupFailure
from gateway.upstream.build import build_router
from gateway.upstream.http import UpstreamHTTP, timeouts_for
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.registry import ModelRegistry, SqliteRegistry
from gateway.upstream.replicas import Replicas
from gateway.upstream.sync import RegistrySync

logger = logging.getLogger("gateway")

SHUTDOWN_GRACE_S = 10.0
STARTUP_PROBE_TIMEOUT_S = 1.0


def build_store(settings: Settings) -> VectorStore:
    if settings.qdrant_url:
        # Imported here: qdrant-client takes seconds to import, and the embedded
        # default (Qdrant Edge) never needs it.
        from gateway.memory.qdrant_store import QdrantServerStore

        return QdrantServerStore(
            settings.qdrant_url,
            settings.qdrant_api_key,
            settings.qdrant_collection,
            settings.embedding_dim,
        )
    space = DiskSpace(settings.data_dir, settings.disk_reserve_mb * MIB)
    return EdgeStore(settings.data_dir / "qdrant-edge", settings.embedding_dim, space)


def build_registry(settings: Settings) -> ModelRegistry:
    """Where registered models live: the Qdrant server the gateways share, when
    there is one, else a SQLite file (shared by gateways on one host)."""
    if settings.qdrant_url:
        from qdrant_client import AsyncQdrantClient

        from gateway.upstream.qdrant_registry import QdrantRegistry

        if settings.registry_path is not None:
            logger.warning(
                "GATEWAY_REGISTRY_PATH is ignored: with GATEWAY_QDRANT_URL, registered "
                "models live on the Qdrant server"
            )
        if settings.qdrant_url == ":memory:":
            client = AsyncQdrantClient(location=":memory:")
        else:
            # The memory store's client checks this server's version already.
            client = AsyncQdrantClient(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key,
                timeout=5,
                check_compatibility=False,
            )
        return QdrantRegistry(client, f"{settings.qdrant_collection}_models")
    return SqliteRegistry(settings.model_registry_path)


async def _startup(
    settings: Settings, metrics: GatewayMetrics, drain: Drain, stack: AsyncExitStack
) -> Services:
    outbox = Outbox(settings.data_dir / OUTBOX_FILE)
    outbox.open()
    stack.callback(outbox.close)

    store = build_store(settings)
    await store.open()  # a Qdrant server that is down is opened once it answers
    stack.push_async_callback(store.close)

    # One pool of connections per dependency. The LLM's carries every chat
    # request, the embedder's two calls per chat turn with memory: both
    # aiohttp (see gateway.upstream.http and gateway.memory.embedder_client).
    # Idle connections are dropped before the servers drop them (gateway.keepalive).
    llm_http = UpstreamHTTP(max_body_bytes=settings.max_upstream_body_bytes)
    stack.push_async_callback(llm_http.aclose)
    embedder_http = UpstreamHTTP()
    stack.push_async_callback(embedder_http.aclose)

    embedder = EmbedderClient(
        embedder_http, settings.embedder_url, settings.embedding_dim, metrics,
        api_key=settings.embedder_api_key, base_timeout_s=settings.embedder_timeout_s,
        connect_timeout_s=settings.connect_timeout_s,
    )  # fmt: skip
    pool = UpstreamPool(metrics, attempts=settings.retry_attempts)
    replicas = Replicas(metrics, health_interval_s=settings.health_interval_s)
    registry = build_registry(settings)
    await registry.open()
    stack.push_async_callback(registry.close)
    router = build_router(settings, llm_http, replicas)
    registrations = RegistrySync(registry, router, interval_s=settings.registry_sync_s)
    # Registered models join before the replicas' first probe (a store that cannot be
    # read now leaves them to the next sync).
    await registrations.sync()

    def readiness(name: str) -> Monitor:
        def changed(_: str, status: str) -> None:
            metrics.dependency_ready.labels(name).set(status == Health.HEALTHY)
            if status == Health.HEALTHY:
                memory.wake_replayer()

        probe = embedder.probe if name == "embedder" else store.ping
        return Monitor(name, probe, interval_s=settings.health_interval_s, on_change=changed)

    embedder_monitor = readiness("embedder")
    store_monitor = readiness("vector_store")
    memory = MemoryService(store, embedder, outbox, metrics, embedder_monitor, store_monitor)

    services = Services(
        settings=settings,
        metrics=metrics,
        replicas=replicas,
        pool=pool,
        router=router,
        registrations=registrations,
        memory=memory,
        upstream_timeout=timeouts_for(settings.read_timeout_s, settings.connect_timeout_s),
        stream_timeout=timeouts_for(settings.stream_idle_timeout_s, settings.connect_timeout_s),
        disk=DiskSpace(settings.data_dir, settings.disk_reserve_mb * MIB),
        drain=drain,
    )
    monitors = [embedder_monitor, store_monitor]
    await asyncio.wait(
        [asyncio.create_task(m.check_now()) for m in monitors], timeout=STARTUP_PROBE_TIMEOUT_S
    )
    for monitor in monitors:
        monitor.start()
        stack.push_async_callback(monitor.stop)
    await replicas.start(STARTUP_PROBE_TIMEOUT_S)
    stack.push_async_callback(replicas.stop)
    registrations.start()
    stack.push_async_callback(registrations.stop)
    memory.start_replayer()
    stack.push_async_callback(memory.stop_replayer)
    for monitor in [*monitors, *replicas.monitors()]:
        logger.info("%s: %s", monitor.name, monitor.state.status)
    return services


def create_app(
    settings: Settings | None = None,
    registry: CollectorRegistry | None = None,
    drain: Drain | None = None,
) -> FastAPI:
    """The app; ``drain`` is the one its server tells when shutdown begins
    (gateway.drain.DrainingServer), a new one by default."""
    settings = settings or Settings()
    metrics = GatewayMetrics(registry if registry is not None else CollectorRegistry())
    drain = drain if drain is not None else Drain(settings.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            services = await _startup(settings, metrics, drain, stack)
            app.state.services = services
            yield
            await _drain_background(services)

    app = FastAPI(
        title="memgate",
        version="0.1.0",
        description="Memory-augmented, OpenAI-compatible chat gateway.",
        lifespan=lifespan,
        # Starlette answered a path with a slash too many with a 307 to the other
        # form, its Location built from the client's Host header (a redirect
        # anyone can aim, sent before the key is checked): a 404 instead.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys, settings.admin_key, settings.api_keys_file)
    install_error_handlers(app)
    # Pass-through last: it takes any /v1 path no other router has.
    routers = (
        chat.router, responses.router, messages.router, memories.router, models.router,
        admin.router, health.router, passthrough.router,
    )  # fmt: skip
    for router in routers:
        app.include_router(router)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        max_concurrency=settings.max_concurrency,
        body_timeout_s=settings.body_timeout_s,
        max_per_tenant=tenant_share(
            settings.max_concurrency,
            settings.max_concurrency_per_tenant,
            app.state.keyring.tenant_count,
        ),
    )
    # Wraps the limits: the key is checked before a slot is taken or a body read.
    routes = [route for router in routers for route in router.routes]
    app.state.routes = routes  # a 405's Allow header names their methods (gateway.errors)
    app.add_middleware(
        KeyCheck, keyring=app.state.keyring, routes=routes, tenant_paths=passthrough.ROOT_PATHS
    )
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            # Any request header: the official SDKs send their own (openai's
            # x-stainless-*, anthropic-version, ...), and which headers a page may
            # send guards nothing here: the origin list does, and the key is a
            # header, never a cookie (no credentials are allowed).
            allow_headers=["*"],
            expose_headers=["X-Request-Id", "X-Memory-Hits", "X-Memory-Status", "Retry-After"],
        )
    app.add_middleware(OneLineStartupFailure)  # lifespan only
    # Added last, so it runs first: every answer, 413 and 429 included, is counted.
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access_log=settings.access_log)
    return app


async def _drain_background(services: Services) -> None:
    pending = list(services.background)
    if pending:
        logger.info("waiting for %d background memory writes", len(pending))
        await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
