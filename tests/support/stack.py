"""Real processes for end-to-end tests: the embedder and the gateway, with the tests' settings.

Each runs as ``python -m <package>`` on a free port, started and waited for by
harness.process (its output in a log file, shown when a start fails; its health
endpoint polled, never a fixed sleep).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from harness.process import Service, free_port, spawn


def start_embedder(log_dir: Path, port: int | None = None, **env: str) -> Service:
    port = port or free_port()
    # One ONNX export for every embedder the tests start (the export is atomic).
    cache = str(Path(tempfile.gettempdir()) / "memgate-tests-onnx")
    env = {"EMBEDDER_PORT": str(port), "EMBEDDER_ONNX_CACHE_DIR": cache, **env}
    service = spawn(
        "embedder", [sys.executable, "-m", "embedder"], log_dir=log_dir, port=port, env=env
    )
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
    argv = [sys.executable, "-m", "gateway"]
    service = spawn("gateway", argv, log_dir=data_dir.parent / "logs", port=port, env=env)
    service.wait_for("/livez", timeout=30)
    if wait_ready:
        service.wait_for("/readyz", timeout=30)
    return service
