"""Which tenant and which upstream replica made each Responses API response.

vLLM keeps a response (for ``GET /v1/responses/{id}``, ``/cancel`` and
``previous_response_id``) in the memory of the replica that made it, so
those requests must go back to that replica, and only for the tenant whose
request made it: a response holds that tenant's conversation. The gateway
notes each id it relays; an id it never relayed (made before a restart, or
through another gateway) is unknown, which the API answers as 404 rather
than guess at a replica or a tenant.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    tenant: str
    upstream: str  # the replica's name in the pool


class ResponseOwners:
    """The newest ``capacity`` response ids and their owners, in memory."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._owners: OrderedDict[str, Owner] = OrderedDict()

    def record(self, response_id: str, tenant: str, upstream: str) -> None:
        self._owners[response_id] = Owner(tenant, upstream)
        self._owners.move_to_end(response_id)
        while len(self._owners) > self._capacity:
            self._owners.popitem(last=False)

    def upstream_for(self, response_id: str, tenant: str) -> str | None:
        """The replica holding ``response_id`` if ``tenant`` made it, else None
        (another tenant's id looks exactly like an unknown one)."""
        owner = self._owners.get(response_id)
        return owner.upstream if owner is not None and owner.tenant == tenant else None
