"""Fixtures for the vllm-server launcher tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from launcher_harness import LAUNCHER_DIR, Harness, make_harness


@pytest.fixture(scope="session")
def launch() -> Iterator[ModuleType]:
    """launch.py (and its launch_config, vllm_pins) imported in-process, for the pure functions."""
    sys.path.insert(0, str(LAUNCHER_DIR))
    try:
        import launch as module

        yield module
    finally:
        sys.path.remove(str(LAUNCHER_DIR))


@pytest.fixture(scope="session")
def launch_config(launch: ModuleType) -> ModuleType:
    import launch_config

    return launch_config


@pytest.fixture(scope="session")
def pins(launch: ModuleType) -> ModuleType:
    import vllm_pins

    return vllm_pins


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    """Fake vllm on PATH, fake vllm/torch metadata: vllm 0.33.0 pinning torch==2.14.0."""
    return make_harness(tmp_path)
