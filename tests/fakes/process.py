"""Start the stand-in LLM server (tests/fakes/llm_server.py) as a real subprocess, for any test.

with start_llm_server() as llm:                  # waits for its "READY <port>" line
    OpenAI(base_url=llm.url, api_key="x")        # llm.url is the /v1 base URL
    llm.set_behavior(mode="fail", status=503, times=1)
    llm.requests(), llm.stats(), llm.reset()
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

SERVER = Path(__file__).with_name("llm_server.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it before you do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningServer:
    proc: subprocess.Popen[str]
    host: str
    port: int  # 0 until the READY line when started with port=None
    _ready: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, for OpenAI(base_url=...) or the gateway's upstream setting."""
        return f"{self.base_url}/v1"

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # drained to the end, so the pipe never fills
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                self._ready.set()

    def wait_ready(self, timeout: float = 15.0) -> RunningServer:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.02):
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake LLM server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"fake LLM server not ready after {timeout} s")
        return self

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it lingers; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # The control API (see llm_server.py), for tests.
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
    as_module: bool = False,
) -> RunningServer:
    """Start the server; with wait=True return once it listens (port=None: it picks one itself).

    With wait=False it returns at once (call .wait_ready() later); port=None then means
    free_port(), so that .port is known while it is still starting.
    """
    if port is None and not wait:
        port = free_port(host)
    root = SERVER.parents[2]
    target = ["-m", "tests.fakes.llm_server"] if as_module else [str(SERVER)]
    args = [f"--port={port or 0}", f"--host={host}", f"--model={model}"]
    args.append(f"--startup-delay={startup_delay}")
    proc = subprocess.Popen(
        [sys.executable, *target, *args], cwd=root, stdout=subprocess.PIPE, text=True
    )
    server = RunningServer(proc, host, port or 0)
    threading.Thread(target=server._read_stdout, daemon=True).start()
    return server.wait_ready() if wait else server
