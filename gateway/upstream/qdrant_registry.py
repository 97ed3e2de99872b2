"""Registrations in a collection on the Qdrant server the deployment shares.

With ``GATEWAY_QDRANT_URL`` set, every gateway of a deployment already talks to
one Qdrant; its registrations live there too, in ``<GATEWAY_QDRANT_COLLECTION>_models``:
one point per alias (id: a UUID5 of the alias), the registration in the payload.

Points carry a constant one-dimensional vector. qdrant-client's local mode takes
a collection without vectors (``vectors_config={}``), but whether a server
stores vectorless points has varied between versions and clients, so the
collection does not depend on it; the vector costs four bytes a point.

The payload holds the upstream's API key: the Qdrant server must require its
own API key (compose sets ``QDRANT__SERVICE__API_KEY``), as the SQLite file is
readable by its owner only.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from gateway.exceptions import RegistryUnavailable
from gateway.upstream.registry import Registration, stamped

T = TypeVar("T")

_NAMESPACE = uuid.UUID("5d3c2a8e-6f0b-4a43-9a51-7c1f0e9b2d64")  # memgate model aliases
_VECTOR = [1.0]
_PAGE = 256


def point_id(alias: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, alias))


def _registration(payload: dict[str, Any] | None) -> Registration | None:
    if not payload:
        return None
    try:
        return Registration(
            alias=str(payload["alias"]),
            upstream_url=str(payload["upstream_url"]),
            model=str(payload["model"]),
            api_key=payload.get("api_key"),
            registered_at=float(payload.get("registered_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return None  # not a registration this gateway wrote: ignored


class QdrantRegistry:
    """Owns its client (built by the lifespan) and closes it."""

    name = "qdrant"

    def __init__(self, client: AsyncQdrantClient, collection: str) -> None:
        self.collection = collection
        self._client = client
        self._ready = False

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except (ResponseHandlingException, httpx.TransportError) as exc:
            raise RegistryUnavailable(f"qdrant unreachable: {type(exc).__name__}") from exc
        except UnexpectedResponse as exc:
            raise RegistryUnavailable(f"qdrant answered {exc.status_code}") from exc

    async def _ensure_collection(self) -> None:
        """Create the collection on first use, so a Qdrant that is down at start
        only delays registrations (the sync loop retries) instead of the gateway."""
        if self._ready:
            return
        if not await self._call(self._client.collection_exists(self.collection)):
            vector = models.VectorParams(size=1, distance=models.Distance.DOT)
            try:
                await self._call(self._client.create_collection(self.collection, vector))
            except (RegistryUnavailable, ValueError):
                # Another gateway may have created it meanwhile: fine if it exists now.
                if not await self._call(self._client.collection_exists(self.collection)):
                    raise
        self._ready = True

    async def open(self) -> None:
        """Nothing to do before the first call (see ``_ensure_collection``)."""

    async def close(self) -> None:
        await self._client.close()

    async def all(self) -> list[Registration]:
        await self._ensure_collection()
        found: list[Registration] = []
        offset: Any = None
        while True:
            points, offset = await self._call(
                self._client.scroll(
                    self.collection, limit=_PAGE, offset=offset, with_payload=True,
                    with_vectors=False,
                )
            )  # fmt: skip
            found += [r for p in points if (r := _registration(p.payload)) is not None]
            if offset is None:
                return sorted(found, key=lambda r: r.alias)

    async def put(self, registration: Registration) -> Registration:
        await self._ensure_collection()
        row = stamped(registration)
        point = models.PointStruct(
            id=point_id(row.alias),
            vector=_VECTOR,
            payload={
                "alias": row.alias,
                "upstream_url": row.upstream_url,
                "model": row.model,
                "api_key": row.api_key,
                "registered_at": row.registered_at,
            },
        )
        await self._call(self._client.upsert(self.collection, [point], wait=True))
        return row

    async def delete(self, alias: str) -> bool:
        await self._ensure_collection()
        pid = point_id(alias)
        found = await self._call(self._client.retrieve(self.collection, [pid]))
        if not found:
            return False
        selector = models.PointIdsList(points=[pid])
        await self._call(self._client.delete(self.collection, selector, wait=True))
        return True
