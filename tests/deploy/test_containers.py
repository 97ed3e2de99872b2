"""Containers: Qdrant as compose runs it, the two images built here, and the whole stack.

These need a Docker engine and skip, saying why, when there is none (CI machines have
none). Knobs for unusual engines:
  MEMGATE_TEST_DOCKER_NETWORK=host   run containers (and builds) on the host network, for
                                     engines without bridge networking (the dev sandbox)
  MEMGATE_TEST_PYTHON_IMAGE          the images' base (default python:3.11-slim)
  MEMGATE_TEST_TORCH_INDEX_URL       the embedder's torch index (default PyTorch's CPU one)
  MEMGATE_TEST_GATEWAY_IMAGE,        use these images instead of building them (an image
  MEMGATE_TEST_EMBEDDER_IMAGE        built with this tree: builds are slow on small machines)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_files import CLOUD, COMPOSE, REPO, environment, load_compose, stack_env

docker = pytest.importorskip("docker", reason="the docker SDK (a testcontainers dependency)")
from testcontainers.core.container import DockerContainer  # noqa: E402

HOST_NETWORK = os.environ.get("MEMGATE_TEST_DOCKER_NETWORK") == "host"
BUILD_TIMEOUT_S = 3600  # a cold embedder build downloads torch
ENGINE_TIMEOUT_S = 600  # one call to the engine (creating a container, say)


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    try:
        client = docker.from_env(timeout=BUILD_TIMEOUT_S)
        client.ping()
    except Exception as exc:
        pytest.skip(
            f"no Docker engine reachable ({type(exc).__name__}): the container tests need "
            "one (DOCKER_HOST or /var/run/docker.sock); CI machines have none"
        )
    _reaper_or_none(client)
    yield client
    client.close()


def _reaper_or_none(client: Any) -> None:
    """testcontainers starts a reaper (Ryuk) from a registry image; without one, our
    ``with`` blocks still remove every container, so go on without it."""
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return
    try:
        client.images.get(config.ryuk_image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(config.ryuk_image)
        except docker.errors.APIError:
            config.ryuk_disabled = True


def pull_or_skip(client: Any, image: str) -> None:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(image)
        except docker.errors.APIError as exc:
            pytest.skip(f"cannot pull {image} on this engine: {exc.explanation}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(url: str, timeout_s: float, status: int = 200, **kwargs: Any) -> Any:
    """Poll until ``url`` answers ``status``: the condition a container start is judged by."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            code, body = http(url, **kwargs)
            if code == status:
                return body
            last = (code, body)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer {status} within {timeout_s} s; last: {last}")


@dataclass
class Running:
    container: DockerContainer
    base_url: str

    def exec(self, command: list[str]) -> tuple[int, str]:
        result = self.container.get_wrapped_container().exec_run(command)
        return result.exit_code, result.output.decode(errors="replace")

    def logs(self) -> str:
        out, err = self.container.get_logs()
        return (out + err).decode(errors="replace")


@contextmanager
def run(image: str, env: dict[str, str], port: int) -> Iterator[Running]:
    """Start a container; on the host network ``port`` must be the one the service uses."""
    # A slow engine (vfs storage copies the whole image per container) can take longer
    # than docker-py's default 60 s to create one.
    container = DockerContainer(image, docker_client_kw={"timeout": ENGINE_TIMEOUT_S})
    for name, value in env.items():
        container.with_env(name, value)
    if HOST_NETWORK:
        container.with_kwargs(network_mode="host")
    else:
        container.with_exposed_ports(port)
    with container:
        if HOST_NETWORK:
            base_url = f"http://127.0.0.1:{port}"
        else:
            host = container.get_container_host_ip()
            base_url = f"http://{host}:{container.get_exposed_port(port)}"
        yield Running(container, base_url)


PYTHON_IMAGE = os.environ.get("MEMGATE_TEST_PYTHON_IMAGE", "python:3.11-slim")
TORCH_INDEX_URL = os.environ.get(
    "MEMGATE_TEST_TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu"
)
DOCKERFILES = {"gateway": "Dockerfile", "embedder": "embedder.Dockerfile"}
# What each image may weigh in all, issue 19's goals: both start FROM scratch with the
# runtime docker/runtime_root.py gathered from the base, so the base's own size does not
# count (measured: docs/deployment.md, "Image sizes").
SIZE_MB = {"gateway": 250, "embedder": 600}


def build(client: Any, target: str) -> str:
    prebuilt = os.environ.get(f"MEMGATE_TEST_{target.upper()}_IMAGE")
    if prebuilt:
        client.images.get(prebuilt)
        return prebuilt
    args = {"PYTHON_IMAGE": PYTHON_IMAGE}
    pull_or_skip(client, args["PYTHON_IMAGE"])
    if target == "embedder":
        args["TORCH_INDEX_URL"] = TORCH_INDEX_URL
    tag = f"memgate/{target}:test"
    client.images.build(
        path=str(REPO),
        dockerfile=DOCKERFILES[target],
        target=target,
        tag=tag,
        buildargs=args,
        network_mode="host" if HOST_NETWORK else None,
        rm=True,
    )
    return tag


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("target", ["gateway", "embedder"])
def test_images_are_lean_and_keep_the_index_out_of_their_history(
    engine: Any, target: str, request: pytest.FixtureRequest
) -> None:
    image = engine.images.get(request.getfixturevalue(f"{target}_image"))
    size_mb = image.attrs["Size"] / 1e6
    print(f"\n{target}: {size_mb:.0f} MB in {len(image.history())} history entries")
    assert size_mb <= SIZE_MB[target]
    history = json.dumps(engine.api.history(image.id))
    assert "INDEX_URL" not in history
    if target == "embedder":
        assert TORCH_INDEX_URL not in history


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_gateway_image_refuses_placeholder_keys(engine: Any, gateway_image: str) -> None:
    env = {"GATEWAY_API_KEYS": "default:change-me-gateway-key"}
    with pytest.raises(docker.errors.ContainerError) as refused:
        engine.containers.run(gateway_image, environment=env, remove=True, network_mode="host")
    assert refused.value.exit_status == 2
    lines = refused.value.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "weak secrets" in lines[0] and "change-me" not in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_cpu_embedder_image_has_no_torch(engine: Any, embedder_image: str) -> None:
    with pytest.raises(docker.errors.ContainerError) as missing:
        engine.containers.run(embedder_image, ["python", "-c", "import torch"], remove=True)
    assert b"No module named 'torch'" in missing.value.stderr


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_cpu_embedder_image_ships_one_copy_of_the_model(
    engine: Any, embedder_image: str
) -> None:
    # Every file over 10 MB in the image: of the model, only the int8 export the service
    # loads (EMBEDDER_ONNX_WEIGHTS), not the weights package's weights nor the fp32 export.
    script = (
        "import os, pathlib\n"
        "for root in ('/opt', '/app', '/home'):\n"
        "    for p in pathlib.Path(root).rglob('*'):\n"
        "        if p.is_file() and p.stat().st_size > 10_000_000: print(p)\n"
        "print('weights', os.environ['EMBEDDER_ONNX_WEIGHTS'])\n"
    )
    out = engine.containers.run(embedder_image, ["python", "-c", script], remove=True).decode()
    lines = out.split("\n")
    assert "weights int8" in lines, out
    model_files = [line for line in lines if "onnxruntime" not in line and "numpy" not in line]
    model_files = [line for line in model_files if line.startswith("/")]
    assert len(model_files) == 1 and model_files[0].endswith("/model_int8.onnx"), out
    assert model_files[0].startswith("/opt/memgate/onnx/"), out


# --------------------------------------------------------------------------- Qdrant


def test_qdrant_runs_as_compose_configures_it(engine: Any) -> None:
    service = load_compose(COMPOSE, env=stack_env())["services"]["qdrant"]
    pull_or_skip(engine, service["image"])
    key = "test-qdrant-key"
    env = {**environment(service), "QDRANT__SERVICE__API_KEY": key}
    port = 6333
    if HOST_NETWORK:  # share the host's ports: take free ones
        port = free_port()
        env["QDRANT__SERVICE__HTTP_PORT"] = str(port)
        env["QDRANT__SERVICE__GRPC_PORT"] = str(free_port())

    with run(service["image"], env, port) as qdrant:
        wait_for(f"{qdrant.base_url}/readyz", 60, headers={"api-key": key})

        status, _ = http(f"{qdrant.base_url}/collections")
        assert status in (401, 403), "Qdrant answered without its API key"
        status, body = http(f"{qdrant.base_url}/collections", headers={"api-key": key})
        assert status == 200, body

        # compose's own health check (no curl in the image) passes inside the container.
        test = [part.replace("6333", str(port)) for part in service["healthcheck"]["test"][1:]]
        code, output = qdrant.exec(test)
        assert code == 0, output


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def gateway_image(engine: Any) -> str:
    return build(engine, "gateway")


@pytest.fixture(scope="module")
def embedder_image(engine: Any) -> str:
    return build(engine, "embedder")


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_gateway_image_has_no_torch_and_runs_as_a_user(engine: Any, gateway_image: str) -> None:
    with pytest.raises(docker.errors.ContainerError) as missing:
        engine.containers.run(gateway_image, ["python", "-c", "import torch"], remove=True)
    assert missing.value.exit_status == 1
    assert b"No module named 'torch'" in missing.value.stderr

    uid = engine.containers.run(
        gateway_image, ["python", "-c", "import os; print(os.getuid())"], remove=True
    )
    assert uid.strip() == b"10001"  # the uid docs/deployment.md tells operators to chown to


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("target", ["gateway", "embedder"])
def test_the_images_ship_no_installer_tests_or_stubs(
    engine: Any, target: str, request: pytest.FixtureRequest
) -> None:
    # What docker/slim-venv.sh removes must really be gone from the shipped virtualenv.
    image = request.getfixturevalue(f"{target}_image")
    script = (
        "import importlib.util as u, pathlib, sys\n"
        "site = next(pathlib.Path(sys.prefix, 'lib').glob('python3*/site-packages'))\n"
        "left = [m for m in ('pip', 'setuptools') if u.find_spec(m)]\n"
        "left += [str(p) for p in site.rglob('*') if p.name == 'tests' and p.is_dir()]\n"
        "left += [str(p) for p in site.rglob('*') if p.suffix in ('.pyi', '.pyx', '.h', '.c')]\n"
        "import os\n"  # nor the base image's shell, package manager or Perl
        "left += [p for p in ('/bin/sh', '/bin/bash', '/usr/bin/apt', '/usr/bin/dpkg',\n"
        "    '/usr/bin/perl') if os.path.lexists(p)]\n"
        "print(sys.prefix, len(left), left[:5])\n"
    )
    out = engine.containers.run(image, ["python", "-c", script], remove=True).decode()
    assert out.split()[:2] == ["/opt/venv", "0"], out


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_an_unwritable_data_dir_stops_the_gateway_image_with_the_remedy(
    engine: Any, gateway_image: str
) -> None:
    # A volume owned by root (a bind mount, a Kubernetes volume without fsGroup): the
    # gateway, uid 10001, cannot write there and says so in one line, exit 3.
    env = {"GATEWAY_API_KEYS": f"t1:{secrets.token_urlsafe(24)}", "GATEWAY_PORT": str(free_port())}
    with pytest.raises(docker.errors.ContainerError) as refused:
        engine.containers.run(
            gateway_image,
            environment=env,
            tmpfs={"/data": "uid=0,gid=0,mode=0755"},
            network_mode="host",
            remove=True,
        )
    assert refused.value.exit_status == 3
    lines = refused.value.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "/data" in lines[0] and "uid 10001" in lines[0], lines[0]
    assert "chown -R 10001:10001 /data" in lines[0] and "fsGroup to 10001" in lines[0]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_embedder_and_gateway_containers_serve(
    engine: Any, embedder_image: str, gateway_image: str
) -> None:
    embedder_port = free_port() if HOST_NETWORK else 8081
    with run(embedder_image, {"EMBEDDER_PORT": str(embedder_port)}, embedder_port) as embedder:
        wait_for(f"{embedder.base_url}/health", 300)  # 503 until the model is loaded
        status, body = http(
            f"{embedder.base_url}/v1/embeddings",
            body={"model": "all-MiniLM-L6-v2", "input": ["the cat sat on the mat"]},
        )
        assert status == 200, body
        assert len(body["data"][0]["embedding"]) == 384

        gateway_port = free_port() if HOST_NETWORK else 8080
        embedder_url = (
            f"{embedder.base_url}/v1"
            if HOST_NETWORK
            else f"http://{_container_ip(embedder)}:8081/v1"
        )
        env = {
            "GATEWAY_PORT": str(gateway_port),
            # A key the gateway accepts (it refuses placeholder and short ones).
            "GATEWAY_API_KEYS": f"t1:{secrets.token_urlsafe(24)}",
            "GATEWAY_EMBEDDER_URL": embedder_url,
            # Nothing listens there: the gateway must start anyway and report not ready.
            "GATEWAY_LLM_URL": f"http://127.0.0.1:{free_port()}/v1",
        }
        with run(gateway_image, env, gateway_port) as gateway:
            wait_for(f"{gateway.base_url}/livez", 60)
            body = wait_for(f"{gateway.base_url}/readyz", 60, status=503)
            assert body["checks"]["llm"]["status"] != "healthy"

            def embedder_healthy() -> bool:
                _, ready = http(f"{gateway.base_url}/readyz")
                return bool(ready["checks"]["embedder"]["status"] == "healthy")

            _until(embedder_healthy, 60, gateway.logs)
            status, _ = http(f"{gateway.base_url}/v1/models")
            assert status == 401  # keys are required on the API

            # Each image's HEALTHCHECK (python; /livez, /health) turns its container healthy.
            for running in (gateway, embedder):
                _until(lambda r=running: _docker_healthy(engine, r), 90, running.logs)


def _docker_healthy(engine: Any, running: Running) -> bool:
    state = engine.api.inspect_container(running.container.get_wrapped_container().id)
    return bool(state["State"]["Health"]["Status"] == "healthy")


def _container_ip(running: Running) -> str:
    wrapped = running.container.get_wrapped_container()
    wrapped.reload()
    networks = wrapped.attrs["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def _until(condition: Any, timeout_s: float, logs: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, logs()
        time.sleep(0.5)


# --------------------------------------------------------------------------- the stack


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_the_cloud_stack_comes_up_healthy(engine: Any, tmp_path: Path) -> None:
    if HOST_NETWORK:
        pytest.skip("the compose stack needs a bridge network; this engine has none")
    if (
        shutil.which("docker") is None
        or subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("the `docker compose` plugin is not installed")
    model = load_compose(COMPOSE, CLOUD, env=stack_env())
    for service in model["services"].values():
        if "build" not in service and "profiles" not in service:
            pull_or_skip(engine, service["image"])

    gateway_port, grafana_port = free_port(), free_port()
    env_file = tmp_path / "stack.env"
    env = {
        **stack_env(),
        "MEMGATE_GATEWAY_PORT": str(gateway_port),
        "MEMGATE_GRAFANA_PORT": str(grafana_port),
        "CLOUD_LLM_URL": "http://127.0.0.1:9/v1",  # no LLM: the gateway must come up anyway
        "PYTHON_IMAGE": os.environ.get("MEMGATE_TEST_PYTHON_IMAGE", "python:3.11-slim"),
    }
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    from testcontainers.compose import DockerCompose

    stack = DockerCompose(
        REPO,
        compose_file_name=["compose.yaml", "compose.cloud.yaml"],
        env_file=str(env_file),
        build=True,
        wait=True,  # `up --wait`: every started service must turn healthy
    )
    with stack:
        base = f"http://127.0.0.1:{gateway_port}"
        wait_for(f"{base}/livez", 60)
        _, ready = http(f"{base}/readyz")
        assert ready["checks"]["embedder"]["status"] == "healthy", ready
        assert ready["checks"]["vector_store"]["status"] == "healthy", ready
        assert ready["checks"]["vector_store"]["backend"] == "qdrant", ready
        wait_for(f"http://127.0.0.1:{grafana_port}/api/health", 60)
