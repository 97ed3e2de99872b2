from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.memory.outbox import Outbox
from tests.gateway.memory.harness import Harness, opened_harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with opened_harness(tmp_path) as harness:
        yield harness


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """An open outbox of its own, for the tests of what reads and writes it."""
    box = Outbox(tmp_path / "o.sqlite3")
    box.open()
    yield box
    box.close()
