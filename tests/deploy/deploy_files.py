"""Read the deployment files the way Docker does, closely enough for static checks.

compose.yaml (+ overrides) with compose's ``${VAR}`` interpolation, .env.example, and
Dockerfiles split into stages. CI has no ``docker compose``, so this is plain PyYAML.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
CLOUD = REPO / "compose.cloud.yaml"
ENV_EXAMPLE = REPO / ".env.example"
GATEWAY_DOCKERFILE = REPO / "Dockerfile"
EMBEDDER_DOCKERFILE = REPO / "embedder.Dockerfile"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ escapes.
VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset: compose refuses to start."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m["braced"] or m["plain"]
        value = env.get(name)
        op, arg = m["op"], m["arg"] or ""
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return VAR.sub(replace, text)


def variables(text: str) -> dict[str, list[str]]:
    """Every variable a file reads, with the operator forms it is read with."""
    found: dict[str, list[str]] = {}
    for m in VAR.finditer(text):
        if m.group(0) == "$$":
            continue
        found.setdefault(m["braced"] or m["plain"], []).append(m["op"] or "")
    return found


def defaults(text: str) -> dict[str, set[str]]:
    """The ``${VAR:-default}`` defaults each variable has in a file."""
    found: dict[str, set[str]] = {}
    for m in VAR.finditer(text):
        if m["braced"] and m["op"] in (":-", "-"):
            found.setdefault(m["braced"], set()).add(m["arg"])
    return found


@dataclass(frozen=True)
class EnvExample:
    values: dict[str, str]  # NAME=value lines
    documented_defaults: dict[str, str]  # "# NAME=value" lines

    @property
    def names(self) -> set[str]:
        return set(self.values) | set(self.documented_defaults)


def read_env_example(path: Path = ENV_EXAMPLE) -> EnvExample:
    values: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if m:
            (commented if m[1] else values)[m[2]] = m[3]
    return EnvExample(values, commented)


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge for the shapes used here: mappings merge, everything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def load_compose(*files: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The merged, interpolated model of ``docker compose -f ... config``."""
    model: dict[str, Any] = {}
    for path in files:
        model = _merge(model, yaml.safe_load(interpolate(path.read_text(), env)))
    return model


def example_env() -> dict[str, str]:
    """What ``--env-file .env.example`` gives compose: the uncommented lines."""
    return dict(read_env_example().values)


def load_tool(name: str, folder: str = "tools") -> ModuleType:
    """A script of tools/ (or docker/) as a module (neither is a package)."""
    path = REPO / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", path)
    assert spec and spec.loader, name
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stack_env() -> dict[str, str]:
    """What the quick start gives compose: .env.example with tools/gen_env.py's secrets,
    plus the cloud provider's key that only the operator has (the same for every call)."""
    return dict(_stack_env())


@functools.cache
def _stack_env() -> dict[str, str]:
    generated = load_tool("gen_env").render(ENV_EXAMPLE.read_text(), fresh_secrets())
    return {**read_env_file(generated), "CLOUD_LLM_API_KEY": "sk-test-cloud-provider-key-0123"}


def fresh_secrets() -> dict[str, str]:
    secrets: dict[str, str] = load_tool("gen_env").fresh_secrets("default")
    return secrets


def read_env_file(text: str) -> dict[str, str]:
    parsed: dict[str, str] = load_tool("env_file").parse(text)
    return parsed


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


_DURATION = re.compile(r"(\d+)(h|ms|m|s|us|ns)")
_SECONDS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def duration_s(text: str) -> float:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(int(n) * _SECONDS[u] for n, u in parts)


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str  # FROM's image or stage name
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, rest)


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, target: str) -> list[Stage]:
        """The target and the stages it is built FROM, base first."""
        chain = []
        name: str | None = target
        while name in self.stages:
            chain.append(self.stages[name])
            name = self.stages[name].base
        return chain[::-1]

    def instructions(self, target: str) -> list[tuple[str, str]]:
        return [ins for stage in self.chain(target) for ins in stage.instructions]


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def read_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"cannot read FROM {rest!r}"
            stage = Stage(m[2] or f"stage{len(stages)}", m[1])
            stages[stage.name] = stage
        elif stage is None:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stage.instructions.append((keyword, rest))
    return Dockerfile(global_args, stages)


def arg_default(dockerfile: Dockerfile, stage: str, name: str) -> str | None:
    for keyword, rest in dockerfile.instructions(stage):
        if keyword == "ARG" and rest.partition("=")[0] == name:
            return rest.partition("=")[2]
    return dockerfile.global_args.get(name)
