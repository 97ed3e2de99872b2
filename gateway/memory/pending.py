"""What waits in the outbox, in memory: per entry its user, per user its entries.

The memory service asks, on every recall and API write, whether a user has
writes not stored yet and which (read-your-writes); the replayer's waiters
ask whether those entries still wait each time the outbox changes; probes
and metrics read the depth. None of that may touch the disk, nor cost more
with the depth of the queue: each user's entries are kept in a set of their
own, so a lookup costs the user's entries, not everyone's (an outbox 200,000
entries deep: bench/results/outbox_scale.md).

An entry the replayer stored leaves the view at once (``settle``: its user's
reads need not wait for it), but its row stays in the table until the store
has flushed it to disk (gateway.memory.replay): meanwhile the view keeps it
as *unflushed*, so that ``head`` passes over it and the replayer knows which
rows to delete after the next flush.

A direct write's own row (its journal: the memory API stores at once, and
the row makes its answer survive a power cut until the store has flushed)
is *held* while the write runs: not waiting, so nobody waits for it, and
passed over by ``head`` like an unflushed row. The write then settles it
(stored: unflushed) or releases it (an outage: it waits like any other).

The outbox changes the view in the thread that changed its tables, in the
same critical section; the event loop reads it under the view's own lock,
which is never held across any I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from gateway.memory.records import Scope


class PendingView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scope_of: dict[int, Scope] = {}  # seq -> its user
        self._by_scope: dict[Scope, set[int]] = {}  # user -> their waiting seqs
        self._revisions: dict[int, int] = {}  # seq -> revision, for rewritten rows only
        self._dead = 0  # rows set aside (the outbox's ``dead`` table)
        self._unflushed: set[int] = set()  # stored, their rows waiting for the flush
        self._unflushed_since: float | None = None  # perf_counter of the oldest
        self._held: dict[int, Scope] = {}  # direct writes' rows while they run

    def track(self, seq: int, scope: Scope) -> None:
        with self._lock:
            self._track(seq, scope)

    def _track(self, seq: int, scope: Scope) -> None:
        self._scope_of[seq] = scope
        self._by_scope.setdefault(scope, set()).add(seq)

    def untrack(self, seqs: Iterable[int]) -> None:
        """The rows are gone from the table (waiting or unflushed)."""
        with self._lock:
            for seq in seqs:
                self._forget_seq(seq)
                self._unflushed.discard(seq)
                self._held.pop(seq, None)
            if not self._unflushed:
                self._unflushed_since = None

    def settle(self, seqs: Iterable[int]) -> None:
        """These waiting entries are stored: they wait no more, and their rows
        wait for the store's flush."""
        with self._lock:
            for seq in seqs:
                if seq in self._scope_of:
                    self._forget_seq(seq)
                    self._unflushed.add(seq)
            if self._unflushed and self._unflushed_since is None:
                self._unflushed_since = time.perf_counter()

    def hold(self, seq: int, scope: Scope) -> None:
        """A direct write's row: neither waiting nor stored while it runs."""
        with self._lock:
            self._held[seq] = scope

    def settle_held(self, seq: int) -> None:
        """The direct write stored its memories: its row waits for the flush."""
        with self._lock:
            if self._held.pop(seq, None) is not None:  # else removed meanwhile (a delete)
                self._unflushed.add(seq)
                if self._unflushed_since is None:
                    self._unflushed_since = time.perf_counter()

    def release_held(self, seq: int, scope: Scope) -> None:
        """The direct write could not store: its row waits like any other."""
        with self._lock:
            if self._held.pop(seq, None) is not None:
                self._track(seq, scope)

    def held_seqs(self) -> set[int]:
        with self._lock:
            return set(self._held)

    def held(self, scope: Scope) -> list[int]:
        """The user's rows of direct writes in flight."""
        with self._lock:
            return [seq for seq, owner in self._held.items() if owner == scope]

    def passed_over(self) -> set[int]:
        """The rows ``head`` skips: stored ones waiting for the flush, and held ones."""
        with self._lock:
            return self._unflushed | self._held.keys()

    def unflushed(self) -> set[int]:
        """The stored entries whose rows wait for the flush (a copy)."""
        with self._lock:
            return set(self._unflushed)

    def unflushed_count(self) -> int:
        return len(self._unflushed)

    def unflushed_age(self) -> float:
        """Seconds since the oldest unflushed entry was stored (0: none)."""
        since = self._unflushed_since
        return 0.0 if since is None else time.perf_counter() - since

    def _forget_seq(self, seq: int) -> None:
        scope = self._scope_of.pop(seq, None)
        self._revisions.pop(seq, None)
        if scope is not None:
            seqs = self._by_scope[scope]
            seqs.discard(seq)
            if not seqs:
                del self._by_scope[scope]

    def rewritten(self, seqs: Iterable[int]) -> None:
        """These rows changed: a replay that read them before must read them again."""
        with self._lock:
            for seq in seqs:
                self._revisions[seq] = self._revisions.get(seq, 0) + 1

    def revisions(self, seqs: Iterable[int]) -> dict[int, int]:
        with self._lock:
            return {seq: self._revisions.get(seq, 0) for seq in seqs}

    def is_current(self, seq: int, revision: int) -> bool:
        """The entry still waits, unchanged since it was read at ``revision``."""
        with self._lock:
            return seq in self._scope_of and self._revisions.get(seq, 0) == revision

    @property
    def depth(self) -> int:
        return len(self._scope_of)

    def count(self, scope: Scope) -> int:
        seqs = self._by_scope.get(scope)
        return len(seqs) if seqs is not None else 0

    def seqs(self, scope: Scope) -> set[int]:
        """The user's waiting entries (a copy)."""
        with self._lock:
            return set(self._by_scope.get(scope, ()))

    def is_pending(self, seq: int) -> bool:
        return seq in self._scope_of

    @property
    def dead(self) -> int:
        return self._dead

    def add_dead(self, n: int) -> None:
        """``n`` rows set aside (negative: removed from the dead table)."""
        with self._lock:
            self._dead += n

    def set_dead(self, n: int) -> None:
        with self._lock:
            self._dead = n
