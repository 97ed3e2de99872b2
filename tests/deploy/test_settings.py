"""Every setting reaches its process, the same way in compose and in `make run`, and is
documented. A new field of ``Settings`` or ``EmbedderSettings`` fails here until compose
passes it (or wires it, with a reason below) and it has a description, from which
tools/config_doc.py writes docs/configuration.md and .env.example's explanation of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    COMPOSE,
    ENV_EXAMPLE,
    REPO,
    arg_default,
    defaults,
    environment,
    load_compose,
    read_dockerfile,
    read_env_example,
    stack_env,
)
from pydantic_settings import BaseSettings

gateway_settings = pytest.importorskip("gateway.settings", reason="the gateway package")
embedder_settings = pytest.importorskip("embedder.settings", reason="the embedder package")

# Settings compose fixes because they wire the stack together (addresses, ports, volumes,
# the keys each service shares with another under that service's own name). `make run`
# reads them from .env like any other.
WIRED = {
    "gateway": {
        "GATEWAY_HOST": "listens on the stack's network",
        "GATEWAY_PORT": "the port compose publishes",
        "GATEWAY_DATA_DIR": "the gateway-data volume",
        "GATEWAY_LLM_URL": "the vllm service, or CLOUD_LLM_URL",
        "GATEWAY_LLM_API_KEY": "VLLM_API_KEY, or CLOUD_LLM_API_KEY",
        "GATEWAY_EMBEDDER_URL": "the embedder service",
        "GATEWAY_QDRANT_URL": "the qdrant service",
        "GATEWAY_QDRANT_API_KEY": "QDRANT_API_KEY, which Qdrant requires",
    },
    "embedder": {
        "EMBEDDER_HOST": "listens on the stack's network",
        "EMBEDDER_PORT": "the port the gateway and Prometheus use",
    },
}
SETTINGS: dict[str, tuple[type[BaseSettings], str, Path]] = {
    "gateway": (gateway_settings.Settings, "GATEWAY_", REPO / "Dockerfile"),
    "embedder": (embedder_settings.EmbedderSettings, "EMBEDDER_", REPO / "embedder.Dockerfile"),
}
# A valid value other than the default, where the type alone does not give one.
SAMPLES = {
    "GATEWAY_PORT": "8181",
    "EMBEDDER_PORT": "8282",
    "GATEWAY_MEMORY_MIN_SCORE": "0.25",
    "EMBEDDER_DEVICE": "cuda",
    "GATEWAY_CORS_ORIGINS": "https://sample.example,http://localhost:3000",
}


def env_name(service: str, field: str) -> str:
    return SETTINGS[service][1] + field.upper()


def fields(service: str) -> dict[str, Any]:
    return {env_name(service, n): f for n, f in SETTINGS[service][0].model_fields.items()}


def as_env(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def sample(name: str, field: Any) -> str:
    """A valid value for the setting that is not its default."""
    if name in SAMPLES:
        return SAMPLES[name]
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = args[0]
    default = field.default
    if typing.get_origin(annotation) is typing.Literal:
        return next(str(v) for v in typing.get_args(annotation) if v != default)
    if kind is bool:
        return str(not default).lower()
    if kind is int:
        return str((default or 2) + 1)
    if kind is float:
        return str(default / 2 if default else 0.5)
    if kind is Path:
        return f"/srv/sample/{name.lower()}"
    if name.endswith("_URL"):  # the gateway accepts only http(s) URLs with a host
        return f"http://sample-{name.lower().replace('_', '-')}:8000/v1"
    return f"sample-{name.lower()}-value-0123456789"


def raw_environment(service: str) -> dict[str, str]:
    import yaml

    raw: dict[str, str] = yaml.safe_load(COMPOSE.read_text())["services"][service]["environment"]
    return raw


@pytest.mark.parametrize("service", SETTINGS)
def test_compose_passes_every_setting_from_env_or_wires_it(service: str) -> None:
    raw = raw_environment(service)
    for name in fields(service):
        assert name in raw, f"compose.yaml does not pass {name} to the {service}"
        passed = str(raw[name]).startswith("${" + name)
        assert passed or name in WIRED[service], (
            f"{name}: compose sets {raw[name]!r}; pass ${{{name}:-}} or list it in WIRED"
        )
        if name in WIRED[service]:
            assert not passed, f"{name} is passed from .env: drop it from WIRED"
    unknown = {n for n in raw if n.startswith(SETTINGS[service][1])} - set(fields(service))
    assert unknown == set(), f"compose passes variables no setting reads: {unknown}"


@pytest.mark.parametrize("service", SETTINGS)
def test_every_setting_is_documented(service: str) -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    example = read_env_example()
    for name in fields(service):
        assert f"| `{name}` |" in doc, f"docs/configuration.md's table does not list {name}"
        if name not in WIRED[service]:
            assert name in example.names, f".env.example does not mention {name}"
            # ...with its explanation: the comment block above it.
            lines = ENV_EXAMPLE.read_text().splitlines()
            at = next(i for i, line in enumerate(lines) if line.lstrip("# ").startswith(name + "="))
            assert lines[at - 1].startswith("#"), f".env.example: {name} has no comment"


def test_the_configuration_doc_and_env_example_are_what_the_settings_generate() -> None:
    config_doc = pytest.importorskip("deploy_files").load_tool("config_doc")
    for path, text in config_doc.render(REPO).items():
        assert (REPO / path).read_text() == text, (
            f"{path} is stale: run python tools/config_doc.py (the descriptions are the "
            "settings' Field(description=...))"
        )


def test_config_doc_reports_and_rewrites_a_stale_file(tmp_path: Path) -> None:
    config_doc = pytest.importorskip("deploy_files").load_tool("config_doc")
    for name in ("docs/configuration.md", ".env.example", "compose.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    doc = tmp_path / "docs" / "configuration.md"
    doc.write_text(doc.read_text().replace("| `GATEWAY_MEMORY_TOP_K` |", "| `GATEWAY_TOP_K` |"))
    assert config_doc.main(["--check", "--repo", str(tmp_path)]) == 1
    assert config_doc.main(["--repo", str(tmp_path)]) == 0
    assert doc.read_text() == (REPO / "docs" / "configuration.md").read_text()
    assert config_doc.main(["--check", "--repo", str(tmp_path)]) == 0


def test_every_setting_has_a_description() -> None:
    config_doc = pytest.importorskip("deploy_files").load_tool("config_doc")
    for service in config_doc.SERVICES:
        for setting in config_doc.settings_of(service):
            assert len(setting.description) > 10, setting.env


@pytest.mark.parametrize("service", SETTINGS)
def test_env_example_shows_the_default_each_setting_gets(service: str) -> None:
    example = read_env_example()
    compose_defaults = defaults(COMPOSE.read_text())
    for name, field in fields(service).items():
        if name in WIRED[service] or name not in example.documented_defaults:
            continue
        in_compose = compose_defaults.get(name, {""})
        expected = next(iter(in_compose)) if in_compose != {""} else as_env(field.default)
        if expected == "data" and name == "GATEWAY_DATA_DIR":
            expected = "./data"
        assert example.documented_defaults[name] == expected, name


@pytest.mark.parametrize("service", SETTINGS)
def test_compose_keeps_what_the_image_sets(service: str) -> None:
    # compose passing an empty value would override the image's ENV with the code default.
    dockerfile = read_dockerfile(SETTINGS[service][2])
    image_env: dict[str, str] = {}
    for kw, rest in dockerfile.instructions(service):
        if kw == "ENV":
            for item in rest.split():
                name, _, value = item.partition("=")
                # ENV X=${X}: the value of the build argument, by default its default.
                arg = re.fullmatch(r"\$\{(\w+)\}", value)
                image_env[name] = (arg_default(dockerfile, service, arg[1]) or "") if arg else value
    env = environment(load_compose(COMPOSE, env=stack_env())["services"][service])
    for name, value in image_env.items():
        if name in fields(service) and name not in WIRED[service]:
            assert env[name] == value, f"compose gives {name}={env[name]!r}, the image {value!r}"


def configured_env(service: str) -> dict[str, str]:
    """A .env that sets every setting of ``service`` to a value other than its default."""
    env = stack_env()
    for name, field in fields(service).items():
        env[name] = sample(name, field)
    return env


def settings_from(service: str, env: dict[str, str]) -> dict[str, Any]:
    """The settings the service's process builds from ``env``, in a fresh interpreter."""
    module, cls = {
        "gateway": ("gateway.settings", "Settings"),
        "embedder": ("embedder.settings", "EmbedderSettings"),
    }[service]
    code = (
        f"import json; from {module} import {cls}; "
        f"print(json.dumps({cls}().model_dump(mode='json')))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS[service][1])}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, cwd="/",
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("service", SETTINGS)
def test_every_setting_in_env_reaches_the_container(service: str) -> None:
    env = configured_env(service)
    container = environment(load_compose(COMPOSE, env=env)["services"][service])
    got = settings_from(service, {**container, "PYTHONPATH": str(REPO)})
    for name in fields(service):
        if name in WIRED[service]:
            continue
        field = name.removeprefix(SETTINGS[service][1]).lower()
        assert as_env(got[field]) in (env[name], env[name].rstrip("/")), (
            f"{name}={env[name]} in .env, but the {service} gets {got[field]!r}"
        )


@pytest.mark.parametrize("service", SETTINGS)
def test_every_setting_in_env_reaches_make_run_the_same_way(service: str, tmp_path: Path) -> None:
    # tools/run_stack.sh evaluates tools/env_file.py's exports before starting both.
    env = configured_env(service)
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
    module, cls = {
        "gateway": ("gateway.settings", "Settings"),
        "embedder": ("embedder.settings", "EmbedderSettings"),
    }[service]
    script = (
        f'eval "$("{sys.executable}" {REPO}/tools/env_file.py {dotenv})" && '
        f'"{sys.executable}" -c "import json; from {module} import {cls}; '
        f"print(json.dumps({cls}().model_dump(mode='json')))\""
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EMBEDDER_"))}
    out = subprocess.run(
        ["bash", "-c", script], env={**clean, "PYTHONPATH": str(REPO)}, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    for name in fields(service):
        field = name.removeprefix(SETTINGS[service][1]).lower()
        assert as_env(got[field]) in (env[name], env[name].rstrip("/")), name


def test_the_environment_wins_over_the_env_file() -> None:
    env_file = pytest.importorskip("deploy_files").load_tool("env_file")
    text = "GATEWAY_MEMORY_TOP_K=9\nEMBEDDER_THREADS='2'\nQDRANT_API_KEY=x\n# GATEWAY_PORT=1\n"
    assert env_file.exports(text, {}) == (
        "export GATEWAY_MEMORY_TOP_K=9\nexport EMBEDDER_THREADS=2\n"
    )
    assert env_file.exports(text, {"GATEWAY_MEMORY_TOP_K": "3"}) == "export EMBEDDER_THREADS=2\n"


def test_run_stack_reads_the_env_file() -> None:
    script = (REPO / "tools" / "run_stack.sh").read_text()
    read = script.index('tools/env_file.py .env)"')
    assert read < script.index('"$PY" -m embedder') and read < script.index('"$PY" -m gateway')


def test_env_file_parses_compose_syntax() -> None:
    env_file = pytest.importorskip("deploy_files").load_tool("env_file")
    parsed = env_file.parse(
        "# comment\nA=1\nexport B = two  # note\nC='x # y'\nD=\"q\"\nE=\nnot a line\nA=3\n"
    )
    assert parsed == {"A": "3", "B": "two", "C": "x # y", "D": "q", "E": ""}
