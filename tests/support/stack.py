"""Real processes for end-to-end tests: the embedder and the gateway.

Each runs as ``python -m <package>`` with its output in a log file (shown when
a start fails), on a free port, and is waited for by polling its health
endpoint, never by sleeping a fixed time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fakes.process import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def _answers(url: str, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == status
    except httpx.HTTPError:
        return False


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, path: str, timeout: float, status: int = 200) -> Service:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            return _answers(f"{self.base_url}{path}", status)

        try:
            wait_until(ready, timeout, what=f"{self.name} {path} -> {status}")
        except TimeoutError:
            self.kill()
            raise TimeoutError(f"{self.name} not ready:\n{self.log()[-4000:]}") from None
        return self

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def _spawn(name: str, module: str, env: Mapping[str, str], log_dir: Path, port: int) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=full_env, stdout=log, stderr=log
        )
    return Service(name, proc, port, log_path)


def start_embedder(log_dir: Path, port: int | None = None, **env: str) -> Service:
    port = port or free_port()
    # One ONNX export for every embedder the tests start (the export is atomic).
    cache = str(Path(tempfile.gettempdir()) / "memgate-tests-onnx")
    env = {"EMBEDDER_PORT": str(port), "EMBEDDER_ONNX_CACHE_DIR": cache, **env}
    service = _spawn("embedder", "embedder", env, log_dir, port)
    return service.wait_for("/health", timeout=120)


def gateway_env(
    data_dir: Path, llm_url: str, embedder_url: str, port: int, **extra: str
) -> dict[str, str]:
    return {
        "GATEWAY_PORT": str(port),
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_LLM_URL": llm_url,
        "GATEWAY_EMBEDDER_URL": embedder_url,
        # Tests want a dead dependency noticed fast; production keeps 5 s.
        "GATEWAY_HEALTH_INTERVAL_S": "0.5",
        # The tests' keys are short throwaways (and the refusal has its own test).
        "GATEWAY_ALLOW_WEAK_SECRETS": "true",
        **extra,
    }


def start_gateway(
    data_dir: Path,
    llm_url: str,
    embedder_url: str,
    *,
    port: int | None = None,
    wait_ready: bool = True,
    **extra: str,
) -> Service:
    """Start ``python -m gateway``; wait for /readyz (or only /livez with wait_ready=False)."""
    port = port or free_port()
    env = gateway_env(data_dir, llm_url, embedder_url, port, **extra)
    service = _spawn("gateway", "gateway", env, data_dir.parent / "logs", port)
    service.wait_for("/livez", timeout=30)
    if wait_ready:
        service.wait_for("/readyz", timeout=30)
    return service
