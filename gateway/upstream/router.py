"""Which upstream serves a model: aliases first, then what upstreams list themselves.

An *upstream* is a group of replicas (one per URL) under one name. A request's
``model`` resolves to an ordered list of targets: the replicas of the upstream
that serves it, rotated so load spreads over them, then its fallbacks. The pool
takes the first target that is healthy and whose breaker allows it.

- an alias (from ``GATEWAY_CONFIG`` or registered at run time) names its
  upstream, the model name to send there, and optionally a fallback;
- otherwise the model ids upstreams list at ``/v1/models`` (refreshed by every
  health probe) route it, so a plain vLLM needs no configuration;
- a name nobody lists is 404, unless some upstream has not listed its models
  yet (still starting): then the request goes to those, and the pool answers
  503 ``starting`` if none of them can take it.

Models served by ``primary`` (``GATEWAY_LLM_URL``) fall back to ``fallback``
(``GATEWAY_FALLBACK_LLM_URL``) with ``GATEWAY_FALLBACK_LLM_MODEL``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.enums import RouteSource
from gateway.upstream.client import DEFAULT_START_GRACE_S, Upstream
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.pool import Target, UpstreamPool, status_of

PRIMARY, FALLBACK = "primary", "fallback"


@dataclass(frozen=True)
class AliasRoute:
    alias: str
    upstream: str
    model: str | None = None  # the name the upstream knows; None: the alias itself
    fallback: str | None = None
    fallback_model: str | None = None
    source: RouteSource = RouteSource.CONFIG


class UnknownModel(Exception):
    def __init__(self, model: str, available: Sequence[str]) -> None:
        super().__init__(model)
        self.model = model
        self.available = list(available)


class ModelRouter:
    def __init__(
        self,
        pool: UpstreamPool,
        *,
        fallback_model: str | None = None,
        start_grace_s: float = DEFAULT_START_GRACE_S,
        context_windows: dict[str, int] | None = None,
    ) -> None:
        self.pool = pool
        self.start_grace_s = start_grace_s
        # Per-model context windows from GATEWAY_CONFIG, by the name clients send.
        self.context_windows = dict(context_windows or {})
        self.groups: dict[str, list[Upstream]] = {}
        self.aliases: dict[str, AliasRoute] = {}
        self._fallback_model = fallback_model
        self._turn = itertools.count()

    # -- configuration -------------------------------------------------------

    def add_upstream(
        self, name: str, urls: Sequence[str], http: UpstreamHTTP, api_key: str | None
    ) -> None:
        if name in self.groups:
            raise ValueError(f"upstream {name!r} exists already")
        replicas = [
            Upstream(
                name if len(urls) == 1 else f"{name}-{i}",
                url.rstrip("/"),
                http,
                api_key=api_key,
                group=name,
                start_grace_s=self.start_grace_s,
            )
            for i, url in enumerate(urls)
        ]
        for replica in replicas:
            self.pool.add(replica)
        self.groups[name] = replicas

    async def remove_upstream(self, name: str) -> None:
        for replica in self.groups.pop(name, []):
            await self.pool.remove(replica.name)

    def add_alias(self, route: AliasRoute) -> None:
        if route.upstream not in self.groups:
            raise ValueError(f"alias {route.alias!r}: unknown upstream {route.upstream!r}")
        self.aliases[route.alias] = route

    # -- routing -------------------------------------------------------------

    def _replicas(self, group: str, model: str | None) -> list[Target]:
        replicas = self.groups.get(group, [])
        if len(replicas) > 1:
            shift = next(self._turn) % len(replicas)
            replicas = replicas[shift:] + replicas[:shift]
        return [Target(replica, model) for replica in replicas]

    def _with_fallback(self, group: str, model: str | None) -> list[Target]:
        targets = self._replicas(group, model)
        if group == PRIMARY and FALLBACK in self.groups:
            targets += self._replicas(FALLBACK, self._fallback_model)
        return targets

    def resolve(self, model: str) -> list[Target]:
        """Targets for ``model``, best first. Raises UnknownModel."""
        route = self.aliases.get(model)
        if route is not None:
            targets = self._replicas(route.upstream, route.model)
            if route.fallback:
                targets += self._replicas(route.fallback, route.fallback_model)
            return targets
        serving = [
            group
            for group, replicas in self.groups.items()
            if any(model in replica.model_ids for replica in replicas)
        ]
        if not serving:
            # Upstreams that have not listed their models yet may serve it.
            serving = [
                group
                for group, replicas in self.groups.items()
                if group != FALLBACK and not any(r.discovered for r in replicas)
            ]
        if not serving:
            raise UnknownModel(model, sorted(self.model_names()))
        return [target for group in serving for target in self._with_fallback(group, None)]

    def default_targets(self) -> list[Target]:
        """Where a request that names no model goes (``/tokenize``, a response
        by id): the primary, then its fallback; without a primary, the first
        upstream configured."""
        group = PRIMARY if PRIMARY in self.groups else next(iter(self.groups), None)
        return [] if group is None else self._with_fallback(group, None)

    def metric_label(self, model: str) -> str:
        """``model`` if it is a name the gateway knows (bounded), else ``other``."""
        if model in self.aliases:
            return model
        for replicas in self.groups.values():
            if any(model in replica.model_ids for replica in replicas):
                return model
        return "other"

    # -- listing -------------------------------------------------------------

    def model_names(self) -> set[str]:
        names = set(self.aliases)
        for replicas in self.groups.values():
            for replica in replicas:
                names |= replica.model_ids
        return names

    def listing(self) -> list[dict[str, Any]]:
        """Every routable model and alias, with its upstream's state (OpenAI list items)."""
        items: dict[str, dict[str, Any]] = {}
        for alias, route in self.aliases.items():
            items[alias] = {
                "id": alias,
                "object": "model",
                "created": 0,
                "owned_by": "memgate",
                "upstream": route.upstream,
                "upstream_model": route.model or alias,
                "state": status_of(self.groups.get(route.upstream, [])),
                "source": route.source,
            }
        for group, replicas in self.groups.items():
            state = status_of(replicas)
            for replica in replicas:
                for model in replica.models:
                    items.setdefault(
                        model["id"],
                        {
                            **model,
                            "upstream": group,
                            "state": state,
                            "source": RouteSource.DISCOVERED,
                        },
                    )
        return sorted(items.values(), key=lambda item: str(item["id"]))
