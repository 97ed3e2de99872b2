"""A direct write's journal (gateway.memory.journal), on a real outbox. What it
buys (a 201 that survives a power cut) is tested through the memory service, in
test_service.py."""

from __future__ import annotations

from gateway.memory.journal import Journal
from gateway.memory.outbox import Outbox
from tests.gateway.memory.harness import ALICE, memories, outbox_rows


async def test_a_held_row_waits_for_nothing_and_nobody_waits_for_it(outbox: Outbox) -> None:
    wakes: list[str] = []
    journal = Journal(outbox, needed=True, wake=lambda: wakes.append("wake"))
    row = await journal.open(ALICE, memories("one"))
    assert row is not None and outbox_rows(outbox) == 1
    assert outbox.depth == 0 and outbox.pending(ALICE) == 0  # not queued
    assert await outbox.head(10) == []  # the replayer passes it over
    stored = journal.on_stored(row)
    assert stored is not None
    stored()  # the writer, under its lock
    journal.stored(row)
    assert outbox.unflushed() == {row} and wakes == ["wake"]  # goes after the next flush


async def test_a_row_whose_write_failed_is_the_queued_write(outbox: Outbox) -> None:
    journal = Journal(outbox, needed=True, wake=lambda: None)
    row = await journal.open(ALICE, memories("during an outage"))
    journal.requeue(row, ALICE)
    assert outbox.depth == 1 and [e.seq for e in await outbox.head(10)] == [row]


async def test_a_refused_writes_row_goes(outbox: Outbox) -> None:
    journal = Journal(outbox, needed=True, wake=lambda: None)
    row = await journal.open(ALICE, memories("refused"))
    await journal.drop(row)
    assert outbox_rows(outbox) == 0 and outbox.depth == 0


async def test_a_store_that_keeps_each_write_needs_no_journal(outbox: Outbox) -> None:
    journal = Journal(outbox, needed=False, wake=lambda: None)
    assert await journal.open(ALICE, memories("on a server")) is None
    assert journal.on_stored(None) is None and outbox_rows(outbox) == 0
