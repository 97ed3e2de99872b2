"""A start-up the operator must mend is one log line, not a traceback
(gateway.startup_failure)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message

from gateway.app import create_app
from gateway.exceptions import DataDirProblem, DimensionMismatch
from gateway.memory.edge_store import EdgeStore
from gateway.settings import Settings
from gateway.startup_failure import OneLineStartupFailure

ROOT = Path(__file__).resolve().parents[2]


async def startup_failure(problem: BaseException) -> str:
    """The message a server gets when the app's lifespan raises ``problem``."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise problem
        yield

    return await startup_message(OneLineStartupFailure(Starlette(lifespan=lifespan)))


async def startup_message(app: ASGIApp) -> str:
    """What ``app`` tells the server (uvicorn logs it as it is) when its start-up fails."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(Exception):  # noqa: B017 (whichever the start-up raised)
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    [failed] = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    return str(failed["message"])


def test_a_problem_for_the_operator_is_its_own_line() -> None:
    message = asyncio.run(startup_failure(DimensionMismatch("the store holds 8-dim vectors")))
    assert message == "memgate cannot start: the store holds 8-dim vectors"


def test_anything_else_keeps_its_traceback() -> None:
    message = asyncio.run(startup_failure(RuntimeError("a bug")))
    assert message.startswith("Traceback") and "RuntimeError: a bug" in message


def test_a_store_of_another_dimension_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def make_store() -> None:
        store = EdgeStore(data / "qdrant-edge", 8)
        await store.open()
        await store.close()

    asyncio.run(make_store())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {**clean, "GATEWAY_DATA_DIR": str(data), "GATEWAY_PORT": "0",
           "GATEWAY_EMBEDDING_DIM": "16", "GATEWAY_LLM_URL": "http://127.0.0.1:9/v1",
           "GATEWAY_EMBEDDER_URL": "http://127.0.0.1:9/v1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3  # uvicorn's code for a failed start-up
    errors = [json.loads(line) for line in result.stderr.splitlines() if '"error"' in line]
    assert "Traceback" not in result.stderr
    assert errors[0]["msg"].startswith("memgate cannot start: the memory store at ")
    assert "Use a new GATEWAY_DATA_DIR or re-embed the memories" in errors[0]["msg"]


async def test_a_damaged_edge_shard_says_what_to_do(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path / "qdrant-edge", 4)
    await store.open()
    await store.close()
    (tmp_path / "qdrant-edge" / "shard" / "edge_config.json").write_text("garbage{")
    with pytest.raises(DataDirProblem, match="restore the data dir from a backup"):
        await EdgeStore(tmp_path / "qdrant-edge", 4).open()


def test_a_qdrant_server_down_at_start_does_not_stop_the_gateway(tmp_path: Path) -> None:
    """It starts, says the store is unhealthy, and keeps what it is given for it."""
    dead = "http://127.0.0.1:9"
    settings = Settings(
        data_dir=tmp_path, qdrant_url=dead, embedder_url=f"{dead}/v1", llm_url=f"{dead}/v1",
        health_interval_s=60,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        report = client.get("/readyz").json()
        store = report["checks"]["vector_store"]
        assert (store["status"], store["backend"]) == ("unhealthy", "qdrant")
        added = client.post("/v1/memories", json={"user_id": "bob", "text": "likes tea"})
        assert added.status_code == 202, added.text
        assert client.get("/admin/outbox").json()["depth"] == 1
