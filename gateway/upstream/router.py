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

The router is where models are registered: ``add_upstream`` and ``add_alias``
at start (gateway.upstream.build, from the environment and ``GATEWAY_CONFIG``),
``register`` and ``unregister`` at run time (gateway.upstream.sync, for
``/admin/models``). Everything else reads it: ``aliases`` is a read-only view;
the replicas live in :class:`~gateway.upstream.replicas.Replicas`, which only
the router changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.enums import RouteSource
from gateway.exceptions import UnknownModel
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.pool import Target
from gateway.upstream.registry import Registration
from gateway.upstream.replica import DEFAULT_START_GRACE_S, Upstream
from gateway.upstream.replicas import Replicas, status_of

PRIMARY, FALLBACK = "primary", "fallback"


@dataclass(frozen=True)
class AliasRoute:
    alias: str
    upstream: str
    model: str | None = None  # the name the upstream knows; None: the alias itself
    fallback: str | None = None
    fallback_model: str | None = None
    source: RouteSource = RouteSource.CONFIG


def registered_group(alias: str) -> str:
    """Registered models get an upstream of their own; the colon keeps these names
    apart from configured ones, which cannot contain it."""
    return f"registered:{alias}"


class ModelRouter:
    def __init__(
        self,
        replicas: Replicas,
        http: UpstreamHTTP,
        *,
        fallback_model: str | None = None,
        start_grace_s: float = DEFAULT_START_GRACE_S,
        context_windows: dict[str, int] | None = None,
    ) -> None:
        self._replicas = replicas
        self._http = http  # what the replicas it adds send through
        self.start_grace_s = start_grace_s
        # Per-model context windows from GATEWAY_CONFIG, by the name clients send.
        self.context_windows = dict(context_windows or {})
        self._aliases: dict[str, AliasRoute] = {}
        self._fallback_model = fallback_model
        self._turn = itertools.count()

    @property
    def replicas(self) -> Replicas:
        """The replicas it routes to (read them; they change through the router only)."""
        return self._replicas

    @property
    def aliases(self) -> Mapping[str, AliasRoute]:
        """Every alias, configured or registered (read-only: change it through the router)."""
        return MappingProxyType(self._aliases)

    def configured(self, alias: str) -> bool:
        """Whether ``alias`` is set in ``GATEWAY_CONFIG`` (registrations never change it)."""
        route = self._aliases.get(alias)
        return route is not None and route.source != RouteSource.REGISTERED

    def registered(self) -> list[str]:
        """The aliases registered at run time."""
        return [a for a, route in self._aliases.items() if route.source == RouteSource.REGISTERED]

    # -- configuration -------------------------------------------------------

    def add_upstream(self, name: str, urls: Sequence[str], api_key: str | None) -> None:
        replicas = [
            Upstream(
                name if len(urls) == 1 else f"{name}-{i}",
                url.rstrip("/"),
                self._http,
                api_key=api_key,
                group=name,
                start_grace_s=self.start_grace_s,
            )
            for i, url in enumerate(urls)
        ]
        self._replicas.add(name, replicas)

    def add_alias(self, route: AliasRoute) -> None:
        if route.upstream not in self._replicas:
            raise ValueError(f"alias {route.alias!r}: unknown upstream {route.upstream!r}")
        self._aliases[route.alias] = route

    def register(self, registration: Registration) -> None:
        """Route a registered model: its alias, on an upstream of its own."""
        group = registered_group(registration.alias)
        self.add_upstream(group, [registration.upstream_url], registration.api_key)
        self.add_alias(
            AliasRoute(registration.alias, group, registration.model, source=RouteSource.REGISTERED)
        )

    async def unregister(self, alias: str) -> None:
        """Stop routing a registered alias, and drop its upstream (if it had one).
        A configured alias stays: only ``GATEWAY_CONFIG`` changes those."""
        if self.configured(alias):
            return
        self._aliases.pop(alias, None)
        await self._replicas.remove(registered_group(alias))

    async def probe(self, alias: str) -> None:
        """Probe the replicas a registered alias routes to, now."""
        await self._replicas.check_now(registered_group(alias))

    # -- routing -------------------------------------------------------------

    def _targets(self, group: str, model: str | None) -> list[Target]:
        replicas = self._replicas.group(group)
        if len(replicas) > 1:
            shift = next(self._turn) % len(replicas)
            replicas = replicas[shift:] + replicas[:shift]
        return [Target(replica, model) for replica in replicas]

    def _with_fallback(self, group: str, model: str | None) -> list[Target]:
        targets = self._targets(group, model)
        if group == PRIMARY and FALLBACK in self._replicas:
            targets += self._targets(FALLBACK, self._fallback_model)
        return targets

    def resolve(self, model: str) -> list[Target]:
        """Targets for ``model``, best first. Raises UnknownModel."""
        route = self._aliases.get(model)
        if route is not None:
            targets = self._targets(route.upstream, route.model)
            if route.fallback:
                targets += self._targets(route.fallback, route.fallback_model)
            return targets
        serving = [
            group
            for group, replicas in self._replicas.groups()
            if any(model in replica.model_ids for replica in replicas)
        ]
        if not serving:
            # Upstreams that have not listed their models yet may serve it.
            serving = [
                group
                for group, replicas in self._replicas.groups()
                if group != FALLBACK and not any(r.discovered for r in replicas)
            ]
        if not serving:
            raise UnknownModel(model, sorted(self.model_names()))
        return [target for group in serving for target in self._with_fallback(group, None)]

    def default_targets(self) -> list[Target]:
        """Where a request that names no model goes (``/tokenize``, a response
        by id): the primary, then its fallback; without a primary, the first
        upstream configured."""
        first = next((name for name, _ in self._replicas.groups()), None)
        group = PRIMARY if PRIMARY in self._replicas else first
        return [] if group is None else self._with_fallback(group, None)

    def metric_label(self, model: str) -> str:
        """``model`` if it is a name the gateway knows (bounded), else ``other``."""
        if model in self._aliases or any(model in r.model_ids for r in self._replicas):
            return model
        return "other"

    # -- listing -------------------------------------------------------------

    def model_names(self) -> set[str]:
        names = set(self._aliases)
        for replica in self._replicas:
            names |= replica.model_ids
        return names

    def listing(self) -> list[dict[str, Any]]:
        """Every routable model and alias, with its upstream's state (OpenAI list items)."""
        items: dict[str, dict[str, Any]] = {}
        for alias, route in self._aliases.items():
            items[alias] = {
                "id": alias,
                "object": "model",
                "created": 0,
                "owned_by": "memgate",
                "upstream": route.upstream,
                "upstream_model": route.model or alias,
                "state": status_of(self._replicas.group(route.upstream)),
                "source": route.source,
            }
        for group, replicas in self._replicas.groups():
            state = status_of(replicas)
            for replica in replicas:
                for model in replica.models:
                    items.setdefault(
                        model["id"],
                        {
                            # OpenAI's required fields, where the upstream's item
                            # lacks them (llama.cpp's has no "created").
                            "object": "model",
                            "created": 0,
                            "owned_by": group,
                            **model,
                            "upstream": group,
                            "state": state,
                            "source": RouteSource.DISCOVERED,
                        },
                    )
        return sorted(items.values(), key=lambda item: str(item["id"]))
