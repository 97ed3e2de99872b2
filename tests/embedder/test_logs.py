"""The embedder logs JSON lines of the gateway's shape, without importing the gateway."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx
import pytest

from embedder.logs import JsonFormatter
from harness.process import Service


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad weights")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("embedder", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_one_json_object_per_line_with_the_gateway_keys() -> None:
    line = JsonFormatter().format(record("model %s ready in %.1fs", "m", 1.25))
    assert "\n" not in line
    entry = json.loads(line)
    assert set(entry) == {"ts", "level", "logger", "msg"}
    assert entry["level"] == "warning" and entry["logger"] == "embedder"
    assert entry["msg"] == "model m ready in 1.2s"
    assert entry["ts"].endswith("+00:00")


def test_quotes_newlines_and_tracebacks_stay_valid_json() -> None:
    entry = json.loads(JsonFormatter().format(record('say "hi"\nthen %s', "go", exc=True)))
    assert entry["msg"] == 'say "hi"\nthen go'
    assert "ValueError: bad weights" in entry["exc"]


def test_the_embedder_entry_point_does_not_import_the_gateway() -> None:
    code = (
        "import sys, embedder.logs, embedder.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.e2e
def test_every_line_the_real_embedder_wrote_is_a_json_object(embedder: Service) -> None:
    """Uvicorn's lines and the model loading included; no progress bars in between."""
    httpx.post(f"{embedder.url}/embeddings", json={"input": "warm"}).raise_for_status()
    lines = [line for line in embedder.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # raises on any other line
    loggers = {entry["logger"] for entry in entries}
    assert {"uvicorn.error", "embedder"} <= loggers, loggers
    assert any(e["msg"].startswith("model ") and "ready" in e["msg"] for e in entries)
