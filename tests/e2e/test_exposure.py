"""What the gateway shows, and to whom (issue 16, item 9). Real gateway process.

Unauthenticated ``/readyz`` (what probes call) says each dependency's status
and nothing more; the detail is behind the admin key. A key in a registered
URL's query string is redacted wherever the URL is shown or logged. Aliases
are validated at registration, and one stored before that stays deletable.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.upstream.registry import Registration, SqliteRegistry
from harness.fake_llm import RunningServer
from harness.process import Service, free_port, wait_until
from tests.conftest import GatewayFactory

pytestmark = pytest.mark.e2e

KEY, ADMIN = "tenant-key-9", "admin-key-9"
SECRET = "SECRET-Q-42"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway(
    gateway_factory: GatewayFactory, llm: RunningServer, embedder: Service, tmp_path: Path
) -> Service:
    return gateway_factory(
        llm.url, embedder.url, GATEWAY_API_KEYS=f"acme:{KEY}", GATEWAY_ADMIN_KEY=ADMIN,
        GATEWAY_REGISTRY_PATH=str(tmp_path / "models.sqlite3"), GATEWAY_REGISTRY_SYNC_S="0.5",
    )  # fmt: skip


def test_readyz_is_short_in_public_and_detailed_for_the_admin(
    gateway: Service, llm: RunningServer
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1?api-key={SECRET}"
    vl = {"alias": "vl", "upstream_url": dead, "model": "Qwen/VL"}
    registered = httpx.post(f"{gateway.base_url}/admin/models", headers=auth(ADMIN), json=vl)
    assert registered.status_code == 201, registered.text
    assert SECRET not in registered.text and "api-key=***" in registered.text

    for headers in ({}, auth(KEY), auth("bogus")):
        public = httpx.get(f"{gateway.base_url}/readyz", headers=headers)
        assert public.status_code == 200  # the default upstream serves: ready
        body = public.json()
        assert body["status"] == "ready"
        checks = body["checks"]
        assert {name: check["status"] for name, check in checks.items()} == {
            "llm": "healthy", "embedder": "healthy", "vector_store": "healthy", "data_dir": "ok",
        }  # fmt: skip
        assert "upstreams" not in checks["llm"] and "last_error" not in checks["embedder"]
        assert str(llm.port) not in public.text and "Qwen" not in public.text

    detail = httpx.get(f"{gateway.base_url}/readyz", headers=auth(ADMIN))
    upstreams = detail.json()["checks"]["llm"]["upstreams"]
    assert {u["url"] for u in upstreams.values()} >= {llm.url, dead.replace(SECRET, "***")}
    assert detail.json()["checks"]["outbox"] == {"depth": 0}
    admin_views = [
        httpx.get(f"{gateway.base_url}/admin/{path}", headers=auth(ADMIN)).text
        for path in ("models", "upstreams")
    ]
    shown = detail.text + "".join(admin_views) + httpx.get(f"{gateway.url}/models",
                                                           headers=auth(KEY)).text  # fmt: skip
    assert "api-key=***" in shown and SECRET not in shown
    gateway.terminate()
    assert SECRET not in gateway.log()


def test_aliases_are_validated_and_a_stored_bad_one_is_deletable(
    gateway: Service, tmp_path: Path
) -> None:
    body = {"alias": "evil\nalias", "upstream_url": "http://127.0.0.1:9/v1", "model": "m"}
    refused = httpx.post(f"{gateway.base_url}/admin/models", headers=auth(ADMIN), json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "alias"

    async def store_directly() -> None:  # as a gateway before validation could have
        registry = SqliteRegistry(tmp_path / "models.sqlite3")
        await registry.open()
        await registry.put(Registration("evil\nalias", "http://127.0.0.1:9/v1", "m"))
        await registry.close()

    asyncio.run(store_directly())

    def listed() -> set[str]:
        answer = httpx.get(f"{gateway.base_url}/admin/models", headers=auth(ADMIN))
        return {m["alias"] for m in answer.json()["data"]}

    wait_until(lambda: "evil\nalias" in listed(), 10, what="the stored alias synced")
    deleted = httpx.delete(f"{gateway.base_url}/admin/models", headers=auth(ADMIN),
                           params={"alias": "evil\nalias"})  # fmt: skip
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert "evil\nalias" not in listed()
