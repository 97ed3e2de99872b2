"""``python -m gateway``'s entry: the start-up heap is frozen before serving."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import uvicorn

from gateway import __main__ as entry


def test_the_start_up_heap_is_out_of_the_collectors_sight_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_when_serving: list[int] = []
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self: frozen_when_serving.append(gc.get_freeze_count())
    )
    try:
        assert gc.get_freeze_count() == 0
        entry.main()
        assert len(frozen_when_serving) == 1 and frozen_when_serving[0] > 1000
    finally:
        gc.unfreeze()
