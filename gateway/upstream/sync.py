"""Keeping the router's registered aliases equal to the store's registrations.

Each gateway reads every registration from its store (``GATEWAY_REGISTRY_SYNC_S``
apart, and at once after its own ``POST``/``DELETE /admin/models``) and
reconciles: aliases new in the store are added, aliases gone from it are
removed, and aliases whose upstream URL, model or key changed are registered
anew. Aliases from ``GATEWAY_CONFIG`` always win and are never touched. A store
that cannot be read leaves routing as it is until a later tick reads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.exceptions import RegistryUnavailable
from gateway.upstream.registry import ModelRegistry, Registration
from gateway.upstream.router import ModelRouter

logger = logging.getLogger("gateway.registry")


@dataclass
class Changes:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


async def apply(
    router: ModelRouter,
    applied: dict[str, Registration],
    registration: Registration,
) -> str | None:
    """Route one registration: ``added``, ``changed``, or None (nothing to do:
    routed like that already, or the alias is configured)."""
    alias = registration.alias
    if router.configured(alias):
        return None
    routed = alias in router.aliases
    current = applied.get(alias)
    if routed and current is not None and current.routes_like(registration):
        applied[alias] = registration
        return None
    await router.unregister(alias)  # whatever was routed before (or nothing)
    router.register(registration)
    applied[alias] = registration
    return "changed" if routed else "added"


async def drop(router: ModelRouter, applied: dict[str, Registration], alias: str) -> bool:
    """Stop routing a registered alias; False if it was not routed (or is configured)."""
    if router.configured(alias):
        return False
    applied.pop(alias, None)
    routed = alias in router.aliases
    await router.unregister(alias)
    return routed


async def reconcile(
    router: ModelRouter,
    applied: dict[str, Registration],
    registrations: Sequence[Registration],
) -> Changes:
    """Make the registered aliases of ``router`` those of ``registrations``.

    ``applied`` is what this router routes now, by alias; it is kept up to date.
    """
    wanted = {r.alias: r for r in registrations}
    changes = Changes()
    for alias in router.registered():
        if alias not in wanted and await drop(router, applied, alias):
            changes.removed.append(alias)
    for registration in wanted.values():
        outcome = await apply(router, applied, registration)
        if outcome == "added":
            changes.added.append(registration.alias)
        elif outcome == "changed":
            changes.changed.append(registration.alias)
    return changes


class RegistrySync:
    """The store of registrations, and the loop that keeps the router in line with it.

    Store writes and reconciliations take turns (one lock), so a tick that read
    the store before this gateway's own write cannot undo it.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        router: ModelRouter,
        *,
        interval_s: float,
    ) -> None:
        self.registry = registry
        self._router = router
        self._interval_s = interval_s
        self._applied: dict[str, Registration] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def sync(self) -> bool:
        """Read the store and reconcile; False (routing unchanged) if it cannot be read."""
        async with self._lock:
            try:
                registrations = await self.registry.all()
            except RegistryUnavailable as exc:
                if not self._failing:
                    logger.warning("model registry unreadable, routing kept as it is: %s", exc)
                self._failing = True
                return False
            if self._failing:
                logger.info("model registry readable again")
                self._failing = False
            changes = await reconcile(self._router, self._applied, registrations)
        if changes:
            logger.info(
                "registered models: added %s, removed %s, changed %s",
                changes.added, changes.removed, changes.changed,
            )  # fmt: skip
        return True

    async def register(self, registration: Registration) -> Registration:
        """Store a registration, route it, and probe its server once, so that its
        state is known when this returns (``healthy``, or ``starting``: registered
        all the same, and its monitor brings it in when it answers). Raises
        RegistryUnavailable (nothing changed)."""
        async with self._lock:
            stored = await self.registry.put(registration)
            await apply(self._router, self._applied, stored)
        await self.sync()
        # Outside the lock: a probe may wait seconds on a slow server.
        await self._router.probe(registration.alias)
        return stored

    async def unregister(self, alias: str) -> bool:
        """Remove an alias from the store and the router; False if neither had it.
        Raises RegistryUnavailable (nothing changed)."""
        async with self._lock:
            stored = await self.registry.delete(alias)
            routed = await drop(self._router, self._applied, alias)
        await self.sync()
        return stored or routed

    def start(self) -> None:
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="registry-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sync()
            except Exception:  # a bug here must not end the loop
                logger.exception("model registry sync failed")
