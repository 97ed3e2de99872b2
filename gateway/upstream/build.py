"""Building the router from the environment and ``GATEWAY_CONFIG``.

``GATEWAY_LLM_URL`` is the ``primary`` upstream, ``GATEWAY_FALLBACK_LLM_URL``
its ``fallback``; the file adds upstreams and aliases. Models registered at
run time join later, through :meth:`ModelRouter.register` (gateway.upstream.sync).
"""

from __future__ import annotations

from gateway.settings import Settings
from gateway.upstream.config import load_upstreams_file
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.replicas import Replicas
from gateway.upstream.router import FALLBACK, PRIMARY, AliasRoute, ModelRouter


def build_router(settings: Settings, http: UpstreamHTTP, replicas: Replicas) -> ModelRouter:
    config = load_upstreams_file(settings.config) if settings.config is not None else None
    router = ModelRouter(
        replicas,
        http,
        fallback_model=settings.fallback_llm_model,
        start_grace_s=settings.llm_start_grace_s,
        context_windows=config.context_windows if config is not None else None,
    )
    router.add_upstream(PRIMARY, [settings.llm_url], settings.llm_api_key)
    if settings.fallback_llm_url:
        router.add_upstream(FALLBACK, [settings.fallback_llm_url], settings.fallback_llm_api_key)
    if config is not None:
        upstreams = config.upstreams
        for upstream in upstreams:
            router.add_upstream(upstream.name, upstream.urls, upstream.key())
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
