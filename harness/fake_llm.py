"""The stand-in LLM (tests/fakes/llm_server.py) as a real subprocess, for tests and benchmarks.

with start_llm_server() as llm:                  # waits for its "READY <port>" line
    OpenAI(base_url=llm.url, api_key="x")        # llm.url is the /v1 base URL
    llm.set_behavior(mode="fail", status=503, times=1)
    llm.requests(), llm.stats(), llm.reset()
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from harness.process import Service, free_port, spawn

MODULE = "tests.fakes.llm_server"


def default_log_dir() -> Path:
    return Path(tempfile.gettempdir()) / "memgate-fake-llm"


@dataclass
class RunningServer(Service):
    """A ``Service`` with the server's control API (see llm_server.py), for tests."""

    def wait_ready(self, timeout: float = 15.0) -> RunningServer:
        """Until its READY line, which names the port it listens on."""
        self.port = int(self.wait_line("READY ", timeout).split()[1])
        return self

    def control(self, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.base_url}/_control/{path}", json=body, timeout=5.0)
        r.raise_for_status()
        return r.json()

    def set_behavior(self, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", "behavior", fields)
        return result

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "requests")["requests"]
        return result

    def clear_requests(self) -> None:
        self.control("DELETE", "requests")

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self.control("GET", "stats")
        return result

    def reset(self) -> None:
        self.control("POST", "reset")


def start_llm_server(
    port: int | None = None,
    startup_delay: float = 0.0,
    model: str = "fake-model",
    host: str = "127.0.0.1",
    wait: bool = True,
    *,
    log_dir: Path | None = None,
    cpus: str | None = None,
) -> RunningServer:
    """Start the server; with wait=True return once it listens (port=None: it picks one itself).

    With wait=False it returns at once (call .wait_ready() later); port=None then means
    free_port(), so that .port is known while it is still starting. Its log goes to
    ``log_dir`` (default: a folder under the system's temp dir).
    """
    if port is None and not wait:
        port = free_port(host)
    argv = [
        sys.executable,
        "-m",
        MODULE,
        f"--port={port or 0}",
        f"--host={host}",
        f"--model={model}",
    ]
    argv.append(f"--startup-delay={startup_delay}")
    log_dir = log_dir or default_log_dir()
    started = spawn("fake-llm", argv, log_dir=log_dir, port=port or 0, cpus=cpus, host=host)
    server = RunningServer(started.name, started.proc, started.port, started.log_path, host)
    return server.wait_ready() if wait else server
