"""Which users were forgotten lately, and when: a turn that began before its
user's forget stores nothing when it ends after it.

A chat turn reads the user's memories at its start and writes the exchange
to the outbox at its end, which for a stream can be minutes later (a stream
has no total deadline). A forget in between purged everything queued and
stored, and the turn's write would then bring back a reply made from the
forgotten memories, and the user's message with it. So the outbox notes
each forget's time here (under the lock its writes take), and refuses a
write that says it began before the forget of its user.

The record is bounded: the latest ``limit`` users' forgets. When one more
pushes the oldest out, that forget's time becomes its tenant's floor: a turn
of that tenant that began before the floor is refused whoever its user is,
since whether its user was among those pushed out is no longer known.
Refusing a turn that ran through ``limit`` forgets loses one exchange of
memory; storing it could bring back a forgotten user's text. The floor is
the tenant's own: one tenant forgetting thousands of users (who need not
exist) must not cost every other tenant's turns in flight their memory.
Tenants are the key ring's, a few: the floors stay few too.

Times are ``time.perf_counter()`` readings, the clock the API handlers
stamp a request's start with.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from gateway.memory.records import Scope

RECENT_FORGETS = 10_000


class Forgotten(Exception):
    """A write that began before its user's forget (never answered to a client:
    the memory service counts it and stores nothing)."""


class RecentForgets:
    """Not thread-safe by itself: the outbox uses it under its own lock."""

    def __init__(self, limit: int = RECENT_FORGETS) -> None:
        self._limit = limit
        self._at: OrderedDict[Scope, float] = OrderedDict()  # oldest forget first
        # Per tenant, the latest forget pushed out of the record.
        self._floors: dict[str, float] = {}

    def forgot(self, scope: Scope, at: float) -> None:
        self._at[scope] = at
        self._at.move_to_end(scope)
        while len(self._at) > self._limit:
            out, pushed_out = self._at.popitem(last=False)
            self._floors[out.tenant] = max(self._floors.get(out.tenant, -math.inf), pushed_out)

    def since(self, scope: Scope, started: float) -> bool:
        """Whether the user may have been forgotten after ``started``."""
        floor = self._floors.get(scope.tenant, -math.inf)
        return started <= floor or self._at.get(scope, -math.inf) >= started

    def __len__(self) -> int:
        return len(self._at)
