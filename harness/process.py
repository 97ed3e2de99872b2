"""A process started for a test or a benchmark, waited for and stopped: the one wrapper.

``spawn`` starts a command (optionally pinned to CPUs with ``taskset``) with its stdout
and stderr in a log file of its own; ``Service`` waits for it by polling (an HTTP status
on a path, a line in its log), never by sleeping a fixed time, shows the log's tail when
it dies or does not get ready, and stops it: SIGTERM, then SIGKILL if it lingers. Fault
tests signal ``service.proc`` directly (SIGKILL) and wait on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL = 4000  # characters of a log shown when a process fails to start
# Every process runs offline: the embedder's weights come from a package, never the Hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may still take it before you do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def pinned(cpus: str | None, argv: Sequence[str]) -> list[str]:
    """``taskset -c CPUS argv``: the process and every thread it later starts stay on CPUS
    (``os.sched_setaffinity`` after the start would miss threads already running)."""
    if cpus and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpus, *argv]
    return list(argv)


def _answers(url: str, status: int) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == status
    except httpx.HTTPError:
        return False


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int  # 0 until known, for a server that picks its own port and prints it
    log_path: Path
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, for OpenAI(base_url=...) or the gateway's upstream setting."""
        return f"{self.base_url}/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-LOG_TAIL:]}"
            )

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``condition``; a RuntimeError if the process dies first, a TimeoutError
        (after killing it) if it takes longer than ``timeout``; both show the log's tail."""

        def ready() -> bool:
            self._check_alive()
            return condition()

        try:
            wait_until(ready, timeout, what=f"{self.name} {what}")
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"{self.name} not ready ({what}) after {timeout} s:\n{self.log()[-LOG_TAIL:]}"
            ) from None

    def wait_for(self, path: str, timeout: float, status: int = 200) -> Self:
        """Until ``GET path`` answers ``status``."""
        self._wait(
            lambda: _answers(f"{self.base_url}{path}", status), timeout, f"{path} -> {status}"
        )
        return self

    def wait_line(self, text: str, timeout: float) -> str:
        """Until a line of the log holds ``text``; returns that line."""
        found: list[str] = []

        def printed() -> bool:
            found.extend(line for line in self.log().splitlines() if text in line)
            return bool(found)

        self._wait(printed, timeout, f"printing {text!r}")
        return found[0]

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it lingers past ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL (what a crash looks like to the others); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate()


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    port: int = 0,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    cpus: str | None = None,
    host: str = "127.0.0.1",
) -> Service:
    """Start ``argv`` with ``env`` over ours; its output goes to a new log in ``log_dir``.

    Each start gets a log file of its own (``NAME-PORT-*.log``), so a restart on the same
    port never truncates or mixes in what the previous process wrote.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    fd, log_name = tempfile.mkstemp(prefix=f"{name}-{port}-", suffix=".log", dir=log_dir)
    full_env = {**os.environ, **OFFLINE, **(env or {})}
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            pinned(cpus, argv), cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    return Service(name, proc, port, Path(log_name), host)
