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
from typing import NamedTuple


class Owner(NamedTuple):
    """Where a response was made: the replica, the model's name there (None:
    the client's own), and the name the client asked for (an alias), which it
    gets back when it fetches the response."""

    upstream: str
    model: str | None = None
    asked_as: str = ""


class ResponseOwners:
    """The newest ``capacity`` response ids of each tenant and the replica that
    made each, in memory.

    Counted per tenant, not in one list for all: one tenant making responses
    as fast as it can would otherwise push every other tenant's ids out, and
    their ``GET``, ``/cancel`` and ``previous_response_id`` would be 404s.
    Tenants are the configured keys' (one without keys), so the whole is
    bounded too.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._by_tenant: dict[str, OrderedDict[str, Owner]] = {}

    def record(
        self,
        response_id: str,
        tenant: str,
        upstream: str,
        model: str | None = None,
        asked_as: str = "",
    ) -> None:
        owned = self._by_tenant.setdefault(tenant, OrderedDict())
        owned[response_id] = Owner(upstream, model, asked_as)
        owned.move_to_end(response_id)
        while len(owned) > self._capacity:
            owned.popitem(last=False)

    def owner_of(self, response_id: str, tenant: str) -> Owner | None:
        """Where ``response_id`` was made if ``tenant`` made it, else None
        (another tenant's id looks exactly like an unknown one)."""
        owned = self._by_tenant.get(tenant)
        return owned.get(response_id) if owned is not None else None

    def upstream_for(self, response_id: str, tenant: str) -> str | None:
        """The replica holding ``response_id`` if ``tenant`` made it, else None."""
        owner = self.owner_of(response_id, tenant)
        return owner.upstream if owner is not None else None
