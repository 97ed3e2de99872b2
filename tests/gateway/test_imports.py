"""The gateway process must never import inference libraries (see DESIGN.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

# llama_cpp: the local LLM (`make run`, the real-LLM tests) runs in a process of its own.
HEAVY = ("torch", "transformers", "sentence_transformers", "vllm", "llama_cpp")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_importing_the_gateway_pulls_in_no_inference_library() -> None:
    assert _loaded_after("import gateway, gateway.app, gateway.__main__") == []


def test_building_the_app_pulls_in_no_inference_library() -> None:
    assert _loaded_after("from gateway.app import create_app; create_app()") == []


def test_the_check_itself_can_fail() -> None:
    # Guards against a check that passes whatever is imported.
    assert "transformers" in _loaded_after("import transformers")


def test_the_check_sees_llama_cpp() -> None:
    # The local LLM's server is installed beside the gateway (the `llm` extra),
    # so only the check stands between the gateway and an accidental import.
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (`make install` installs it)")
    assert "llama_cpp" in _loaded_after("import llama_cpp")


def test_importing_the_embedder_package_is_light() -> None:
    # torch loads only inside the model-loading code, on the inference thread.
    assert _loaded_after("import embedder.app, embedder.__main__") == []
