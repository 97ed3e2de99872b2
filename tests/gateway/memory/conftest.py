from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.memory.harness import Harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    harness.outbox.open()
    await harness.store.open()
    harness.embedder_monitor.report_success()
    harness.store_monitor.report_success()
    yield harness
    await harness.store.close()
    harness.outbox.close()
    await harness.http.aclose()
