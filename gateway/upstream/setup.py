"""Assembling the router from the environment and ``GATEWAY_CONFIG``.

Registered models are routed by :mod:`gateway.upstream.sync`, through
``register`` and ``unregister`` here.
"""

from __future__ import annotations

from gateway.enums import RouteSource
from gateway.settings import Settings
from gateway.upstream.config import load_upstreams_file
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.registry import Registration
from gateway.upstream.router import FALLBACK, PRIMARY, AliasRoute, ModelRouter


def registered_group(alias: str) -> str:
    """Registered models get an upstream of their own; the colon keeps these names
    apart from configured ones, which cannot contain it."""
    return f"registered:{alias}"


def register(router: ModelRouter, http: UpstreamHTTP, registration: Registration) -> None:
    group = registered_group(registration.alias)
    router.add_upstream(group, [registration.upstream_url], http, registration.api_key)
    router.add_alias(
        AliasRoute(registration.alias, group, registration.model, source=RouteSource.REGISTERED)
    )


async def unregister(router: ModelRouter, alias: str) -> None:
    router.aliases.pop(alias, None)
    await router.remove_upstream(registered_group(alias))


def build_router(settings: Settings, http: UpstreamHTTP, pool: UpstreamPool) -> ModelRouter:
    config = load_upstreams_file(settings.config) if settings.config is not None else None
    router = ModelRouter(
        pool,
        fallback_model=settings.fallback_llm_model,
        start_grace_s=settings.llm_start_grace_s,
        context_windows=config.context_windows if config is not None else None,
    )
    router.add_upstream(PRIMARY, [settings.llm_url], http, settings.llm_api_key)
    if settings.fallback_llm_url:
        router.add_upstream(
            FALLBACK, [settings.fallback_llm_url], http, settings.fallback_llm_api_key
        )
    if config is not None:
        upstreams = config.upstreams
        for upstream in upstreams:
            router.add_upstream(upstream.name, upstream.urls, http, upstream.key())
        for upstream in upstreams:
            for entry in upstream.models:
                router.add_alias(
                    AliasRoute(
                        entry.alias,
                        upstream.name,
                        entry.model,
                        entry.fallback,
                        entry.fallback_model,
                    )
                )
    return router
