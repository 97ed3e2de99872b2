"""Reconciling a router with the store of registrations, and gateways sharing one store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from qdrant_client import AsyncQdrantClient

from gateway.exceptions import RegistryUnavailable
from gateway.metrics import GatewayMetrics
from gateway.upstream.http import UpstreamHTTP
from gateway.upstream.qdrant_registry import QdrantRegistry
from gateway.upstream.registry import Registration, SqliteRegistry
from gateway.upstream.replicas import Replicas
from gateway.upstream.router import PRIMARY, AliasRoute, ModelRouter, registered_group
from gateway.upstream.sync import RegistrySync, reconcile

VL = Registration("vl", "http://x:8000/v1", "Qwen/VL", "k1")
OTHER = Registration("other", "http://y:8000/v1", "m")


@pytest.fixture
async def http() -> AsyncIterator[UpstreamHTTP]:
    async with UpstreamHTTP() as client:
        yield client


def new_router(http: UpstreamHTTP) -> ModelRouter:
    replicas = Replicas(GatewayMetrics(CollectorRegistry()), health_interval_s=60)
    router = ModelRouter(replicas, http)
    router.add_upstream(PRIMARY, ["http://vllm:8000/v1"], None)
    router.add_upstream("qwen", ["http://a/v1"], None)
    router.add_alias(AliasRoute("fast", "qwen", "Qwen/Qwen2.5-7B"))  # from GATEWAY_CONFIG
    return router


@pytest.fixture
def router(http: UpstreamHTTP) -> ModelRouter:
    return new_router(http)


def routed(router: ModelRouter) -> dict[str, tuple[str, str | None, str]]:
    """Registered aliases: (upstream URL, model sent, source)."""
    return {
        alias: (router.replicas.group(route.upstream)[0].base_url, route.model, route.source)
        for alias, route in router.aliases.items()
        if route.source == "registered"
    }


async def test_new_registrations_are_added(router: ModelRouter) -> None:
    applied: dict[str, Registration] = {}
    changes = await reconcile(router, applied, [VL, OTHER])
    assert sorted(changes.added) == ["other", "vl"] and not changes.removed
    assert routed(router) == {
        "vl": ("http://x:8000/v1", "Qwen/VL", "registered"),
        "other": ("http://y:8000/v1", "m", "registered"),
    }
    assert router.replicas.get(registered_group("vl")) is not None
    assert not await reconcile(router, applied, [VL, OTHER])  # nothing left to do


async def test_aliases_gone_from_the_store_are_removed(router: ModelRouter) -> None:
    applied: dict[str, Registration] = {}
    await reconcile(router, applied, [VL, OTHER])
    changes = await reconcile(router, applied, [OTHER])
    assert changes.removed == ["vl"] and not changes.added and not changes.changed
    assert set(routed(router)) == {"other"}
    assert registered_group("vl") not in router.replicas
    assert router.replicas.get(registered_group("vl")) is None
    assert set(applied) == {"other"}


@pytest.mark.parametrize(
    "changed",
    [
        Registration("vl", "http://z:8000/v1", "Qwen/VL", "k1"),
        Registration("vl", "http://x:8000/v1", "Qwen/VL-2", "k1"),
        Registration("vl", "http://x:8000/v1", "Qwen/VL", "k2"),
        Registration("vl", "http://x:8000/v1", "Qwen/VL", None),
    ],
)
async def test_a_changed_registration_is_registered_anew(
    router: ModelRouter, changed: Registration
) -> None:
    applied: dict[str, Registration] = {}
    await reconcile(router, applied, [VL])
    before = router.replicas.group(registered_group("vl"))[0]
    changes = await reconcile(router, applied, [changed])
    assert changes.changed == ["vl"] and not changes.added and not changes.removed
    after = router.replicas.group(registered_group("vl"))[0]
    assert after is not before and router.replicas.get(after.name) is after
    assert routed(router)["vl"] == (changed.upstream_url, changed.model, "registered")
    assert applied["vl"] == changed


async def test_a_new_time_alone_changes_nothing(router: ModelRouter) -> None:
    applied: dict[str, Registration] = {}
    await reconcile(router, applied, [VL])
    replica = router.replicas.group(registered_group("vl"))[0]
    again = Registration(VL.alias, VL.upstream_url, VL.model, VL.api_key, registered_at=99.0)
    assert not await reconcile(router, applied, [again])
    assert router.replicas.group(registered_group("vl"))[0] is replica  # monitor and breaker kept


async def test_configured_aliases_are_never_touched(router: ModelRouter) -> None:
    applied: dict[str, Registration] = {}
    configured = router.aliases["fast"]
    shadowed = Registration("fast", "http://elsewhere/v1", "other-model")
    assert not await reconcile(router, applied, [shadowed])
    assert router.aliases["fast"] is configured
    assert registered_group("fast") not in router.replicas
    assert not await reconcile(router, applied, [])  # not in the store: kept all the same
    assert router.aliases["fast"] is configured


class FlakyRegistry:
    """A store whose reads and writes fail while ``down`` is set."""

    name = "flaky"

    def __init__(self) -> None:
        self.rows: dict[str, Registration] = {}
        self.down = False
        self.reads = 0

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("qdrant unreachable: ConnectError")

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def all(self) -> list[Registration]:
        self.reads += 1
        self._check()
        return [self.rows[alias] for alias in sorted(self.rows)]

    async def put(self, registration: Registration) -> Registration:
        self._check()
        self.rows[registration.alias] = registration
        return registration

    async def delete(self, alias: str) -> bool:
        self._check()
        return self.rows.pop(alias, None) is not None


async def test_a_store_that_cannot_be_read_leaves_routing_as_it_is(
    router: ModelRouter, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyRegistry()
    sync = RegistrySync(store, router, interval_s=0)
    await store.put(VL)
    assert await sync.sync()
    before = dict(router.aliases)

    store.down = True
    store.rows.clear()  # whatever the store holds, it cannot be read
    assert not await sync.sync()
    assert not await sync.sync()
    assert router.aliases == before
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not once per tick

    store.down = False
    assert await sync.sync()
    assert routed(router) == {}


async def test_an_own_registration_is_probed_before_it_returns(router: ModelRouter) -> None:
    sync = RegistrySync(FlakyRegistry(), router, interval_s=0)
    await sync.register(VL)  # nothing answers at http://x:8000
    (replica,) = router.replicas.group(registered_group("vl"))
    assert replica.monitor is not None and replica.monitor.state.last_error is not None
    assert replica.refusing  # the probe found nothing listening


async def test_own_changes_fail_cleanly_when_the_store_is_down(router: ModelRouter) -> None:
    store = FlakyRegistry()
    sync = RegistrySync(store, router, interval_s=0)
    await sync.register(VL)
    before = dict(router.aliases)
    store.down = True
    with pytest.raises(RegistryUnavailable):
        await sync.register(OTHER)
    with pytest.raises(RegistryUnavailable):
        await sync.unregister("vl")
    assert router.aliases == before


async def test_own_changes_route_at_once_and_catch_up_with_the_store(router: ModelRouter) -> None:
    store = FlakyRegistry()
    store.rows["other"] = OTHER  # written by another gateway, not seen yet
    sync = RegistrySync(store, router, interval_s=0)
    await sync.register(VL)
    assert set(routed(router)) == {"vl", "other"}
    store.rows.pop("vl")  # another gateway deleted it: this one still routes it
    del store.rows["other"]
    assert await sync.unregister("vl") is True  # routed here: deleted
    assert routed(router) == {}
    assert await sync.unregister("vl") is False
    assert await sync.unregister("fast") is False  # configured: never unregistered
    assert "fast" in router.aliases


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll a condition every 10 ms, for 5 s at most."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not met within 5 s")


async def test_the_loop_follows_the_store(router: ModelRouter) -> None:
    store = FlakyRegistry()
    sync = RegistrySync(store, router, interval_s=0.02)
    sync.start()
    try:
        store.rows["vl"] = VL
        await eventually(lambda: "vl" in router.aliases)
        store.down = True
        store.rows.clear()
        failed_from = store.reads
        await eventually(lambda: store.reads >= failed_from + 3)  # ticks fail, the loop lives on
        assert "vl" in router.aliases
        store.down = False
        await eventually(lambda: "vl" not in router.aliases)
    finally:
        await sync.stop()


async def test_no_loop_when_the_interval_is_zero(router: ModelRouter) -> None:
    sync = RegistrySync(FlakyRegistry(), router, interval_s=0)
    sync.start()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "registry-sync"]
    await sync.stop()


async def test_two_gateways_share_registrations_through_qdrant(http: UpstreamHTTP) -> None:
    client = AsyncQdrantClient(location=":memory:")
    one, two = new_router(http), new_router(http)
    sync_one = RegistrySync(QdrantRegistry(client, "c_models"), one, interval_s=0)
    sync_two = RegistrySync(QdrantRegistry(client, "c_models"), two, interval_s=0)
    await sync_one.register(VL)
    assert await sync_two.sync()
    assert routed(two) == {"vl": ("http://x:8000/v1", "Qwen/VL", "registered")}

    changed = Registration("vl", "http://z:8000/v1", "Qwen/VL-2")
    await sync_two.register(changed)
    assert await sync_one.sync()
    assert routed(one)["vl"] == ("http://z:8000/v1", "Qwen/VL-2", "registered")

    assert await sync_one.unregister("vl")
    assert await sync_two.sync()
    assert routed(two) == {} and routed(one) == {}
    await client.close()


async def test_two_gateways_share_registrations_through_one_sqlite_file(
    tmp_path: Path, http: UpstreamHTTP
) -> None:
    stores = [SqliteRegistry(tmp_path / "models.sqlite3") for _ in range(2)]
    for store in stores:
        await store.open()
    one, two = new_router(http), new_router(http)
    sync_one = RegistrySync(stores[0], one, interval_s=0)
    sync_two = RegistrySync(stores[1], two, interval_s=0)
    await sync_one.register(VL)
    assert await sync_two.sync() and "vl" in two.aliases
    assert await sync_two.unregister("vl")
    assert await sync_one.sync() and "vl" not in one.aliases
    for store in stores:
        await store.close()
