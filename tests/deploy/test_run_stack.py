"""`make run`'s script (tools/run_stack.sh): what it refuses before it starts anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("variable", ["GATEWAY_PORT", "EMBEDDER_PORT"])
def test_a_taken_port_stops_make_run_before_anything_loads(
    variable: str, taken: int, tmp_path: Path
) -> None:
    # The gateway's port taken showed only after the LLM and the embedder had
    # loaded, as a uvicorn log line among the shutdown's.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EMBEDDER_"))}
    env = {
        **clean,
        "PY": sys.executable,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_LLM_URL": "http://127.0.0.1:9/v1",  # no local LLM either
        "GATEWAY_PORT": "0",
        "EMBEDDER_PORT": "0",
        variable: str(taken),
    }
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "run_stack.sh")], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"memgate: port {taken} is taken; set {variable} to a free one"
    )
    assert "loading the embedder" not in done.stderr
