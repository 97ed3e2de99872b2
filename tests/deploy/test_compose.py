"""Static checks of compose.yaml, compose.cloud.yaml and .env.example (no Docker needed)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from deploy_files import (
    CLOUD,
    COMPOSE,
    EMBEDDER_DOCKERFILE,
    ENV_EXAMPLE,
    REPO,
    VAR,
    MissingVariable,
    arg_default,
    defaults,
    duration_s,
    environment,
    interpolate,
    load_compose,
    read_dockerfile,
    read_env_example,
    stack_env,
    variables,
)

from gateway.drain import graceful_timeout_s
from gateway.settings import Settings

# What each stateful service must keep on a named volume, and where.
STATE = {
    "qdrant": "/qdrant/storage",
    "gateway": "/data",
    "prometheus": "/prometheus",
    "grafana": "/var/lib/grafana",
    "vllm": "/root/.cache/huggingface",
}
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+$")
# name:tag, optionally @sha256:<digest> (the operator's *_IMAGE override in .env).
PINNED_IMAGE = re.compile(r"^(?P<name>[\w./-]+):(?P<tag>v?\d+\.\d+\.\d+)(@sha256:[0-9a-f]{64})?$")
SECRETS = ("GATEWAY_API_KEYS", "QDRANT_API_KEY", "GRAFANA_ADMIN_PASSWORD")
# What compose says when one is missing: it stops at the first, so each message names all
# of them and the command that writes them (docs/deployment.md quotes it).
SECRETS_MESSAGE = (
    "set GATEWAY_API_KEYS, QDRANT_API_KEY and GRAFANA_ADMIN_PASSWORD in .env "
    "(python3 tools/gen_env.py writes all of them)"
)
THIRD_PARTY = {
    "qdrant": "QDRANT_IMAGE",
    "prometheus": "PROMETHEUS_IMAGE",
    "grafana": "GRAFANA_IMAGE",
}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load_compose(COMPOSE, env=stack_env())


@pytest.fixture(scope="module")
def cloud_stack() -> dict[str, Any]:
    return load_compose(COMPOSE, CLOUD, env=stack_env())


def services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return model["services"]  # type: ignore[no-any-return]


def test_the_stack_has_the_services_of_the_design(stack: dict[str, Any]) -> None:
    assert set(services(stack)) == {
        "vllm",
        "embedder",
        "qdrant",
        "gateway",
        "prometheus",
        "grafana",
    }


def test_every_service_is_health_checked_without_curl(stack: dict[str, Any]) -> None:
    for name, service in services(stack).items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
        # Most of these images ship no curl; the checks use python, wget or bash.
        assert "curl" not in " ".join(test), f"{name}'s health check needs curl"
        assert duration_s(check["interval"]) > 0 and duration_s(check["start_period"]) > 0


def test_every_image_is_pinned(stack: dict[str, Any]) -> None:
    for name, service in services(stack).items():
        image = service.get("image", "")
        assert PINNED_IMAGE.match(image), f"{name}: {image!r} is not pinned"


@pytest.mark.parametrize(("service", "variable"), THIRD_PARTY.items())
def test_third_party_images_can_be_pinned_by_digest_beside_their_tag(
    service: str, variable: str
) -> None:
    default = defaults(COMPOSE.read_text())[variable]
    (image,) = default
    assert PINNED_IMAGE.match(image)
    assert read_env_example().documented_defaults[variable] == image
    digest = "@sha256:" + "ab" * 32
    model = load_compose(COMPOSE, env={**stack_env(), variable: image + digest})
    assert services(model)[service]["image"] == image + digest
    assert PINNED_IMAGE.match(image + digest)


def test_the_images_built_here_carry_the_project_version(stack: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert services(stack)["gateway"]["image"] == f"memgate/gateway:{version}"
    assert services(stack)["embedder"]["image"] == f"memgate/embedder:{version}"
    assert services(stack)["gateway"]["build"]["target"] == "gateway"
    assert services(stack)["embedder"]["build"]["target"] == "embedder"
    assert services(stack)["embedder"]["build"]["dockerfile"] == EMBEDDER_DOCKERFILE.name
    assert "dockerfile" not in services(stack)["gateway"]["build"]  # ./Dockerfile


def test_vllm_is_pinned_to_one_version_everywhere() -> None:
    dockerfile = read_dockerfile(REPO / "vllm-server" / "Dockerfile")
    pinned = dockerfile.global_args["VLLM_VERSION"]
    assert PINNED_TAG.match(pinned)
    assert [s.base for s in dockerfile.stages.values()] == [
        "${VLLM_IMAGE}:${VLLM_VERSION}${VLLM_DIGEST}"
    ]
    assert defaults(COMPOSE.read_text())["VLLM_VERSION"] == {pinned}
    assert read_env_example().documented_defaults["VLLM_VERSION"] == pinned
    # The repository is an argument too (a mirror, air-gapped), with the same default.
    repository = dockerfile.global_args["VLLM_IMAGE"]
    assert repository == "vllm/vllm-openai"
    assert defaults(COMPOSE.read_text())["VLLM_IMAGE"] == {repository}
    assert read_env_example().documented_defaults["VLLM_IMAGE"] == repository
    # The tag alone unless pinned (tools/pin_images.py), then the digest beside it.
    assert re.fullmatch(r"(@sha256:[0-9a-f]{64})?", dockerfile.global_args["VLLM_DIGEST"])


def test_vllms_health_check_probes_the_port_it_listens_on(stack: dict[str, Any]) -> None:
    dockerfile = read_dockerfile(REPO / "vllm-server" / "Dockerfile")
    (stage,) = dockerfile.stages.values()
    env = " ".join(rest for kw, rest in stage.instructions if kw == "ENV")
    check = next(rest for kw, rest in stage.instructions if kw == "HEALTHCHECK")
    cmd = next(rest for kw, rest in stage.instructions if kw == "CMD")
    assert "VLLM_PORT=8000" in env and "os.environ.get('VLLM_PORT'" in check
    assert "--port" not in cmd  # the launcher adds --port $VLLM_PORT
    vllm = services(stack)["vllm"]
    assert "os.environ['VLLM_PORT']" in " ".join(vllm["healthcheck"]["test"])
    port = environment(vllm)["VLLM_PORT"]
    assert vllm["expose"] == [port]
    assert environment(services(stack)["gateway"])["GATEWAY_LLM_URL"] == f"http://vllm:{port}/v1"


def test_the_embedders_build_default_is_cpu_torch() -> None:
    dockerfile = read_dockerfile(EMBEDDER_DOCKERFILE)
    cpu_index = arg_default(dockerfile, "embedder-export", "TORCH_INDEX_URL")
    assert cpu_index == "https://download.pytorch.org/whl/cpu"
    assert defaults(COMPOSE.read_text())["TORCH_INDEX_URL"] == {cpu_index}
    index = arg_default(dockerfile, "embedder-onnx-deps", "PIP_INDEX_URL")
    assert defaults(COMPOSE.read_text())["PIP_INDEX_URL"] == {index}


def test_only_the_gateway_and_grafana_publish_ports(stack: dict[str, Any]) -> None:
    publishing = {name for name, service in services(stack).items() if service.get("ports")}
    assert publishing == {"gateway", "grafana"}


def test_stateful_services_keep_their_state_on_named_volumes(stack: dict[str, Any]) -> None:
    declared = set(stack["volumes"])
    for name, target in STATE.items():
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services(stack)[name]["volumes"]}
        assert target in mounts, f"{name} keeps {target} in the container's own layer"
        assert mounts[target] in declared, f"{name}: {mounts[target]} is not a named volume"


def test_the_gateway_waits_for_embedder_and_qdrant_but_not_for_vllm(
    stack: dict[str, Any],
) -> None:
    depends = services(stack)["gateway"]["depends_on"]
    assert depends == {
        "embedder": {"condition": "service_healthy"},
        "qdrant": {"condition": "service_healthy"},
    }


def test_compose_waits_for_the_gateways_shutdown_before_it_kills(stack: dict[str, Any]) -> None:
    # A SIGKILL before the drain has ended the answers in flight cuts them without a word.
    grace = Settings.model_fields["shutdown_grace_s"].default
    stop = duration_s(services(stack)["gateway"]["stop_grace_period"])
    assert stop >= graceful_timeout_s(grace) + 5


def test_vllm_gets_a_gpu_shared_memory_caches_and_time_to_load(stack: dict[str, Any]) -> None:
    vllm = services(stack)["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert vllm["ipc"] == "host"
    assert vllm["init"] is True  # the launcher must not be PID 1 (it reaps nothing)
    volumes = {m.split(":")[1] for m in vllm["volumes"]}
    assert {"/root/.cache/huggingface", "/root/.cache/vllm"} <= volumes
    env = environment(vllm)
    assert "HF_TOKEN" in env and env["VLLM_MODEL"]
    # A model download and load takes minutes: the start period must cover it.
    assert duration_s(vllm["healthcheck"]["start_period"]) >= 15 * 60


def test_qdrant_requires_an_api_key(stack: dict[str, Any]) -> None:
    env = environment(services(stack)["qdrant"])
    assert env["QDRANT__SERVICE__API_KEY"] == stack_env()["QDRANT_API_KEY"]
    assert (
        environment(services(stack)["gateway"])["GATEWAY_QDRANT_API_KEY"]
        == (env["QDRANT__SERVICE__API_KEY"])
    )


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("unset", ["missing", "empty"])
def test_required_secrets_stop_compose_when_unset(secret: str, unset: str) -> None:
    assert set(variables(COMPOSE.read_text())[secret]) == {":?"}
    env = stack_env()
    if unset == "missing":
        del env[secret]
    else:
        env[secret] = ""  # as in .env.example: `cp .env.example .env` does not start
    with pytest.raises(MissingVariable, match=secret) as stopped:
        load_compose(COMPOSE, env=env)
    assert str(stopped.value) == f"{secret}: {SECRETS_MESSAGE}"


def test_every_secrets_message_names_them_all_and_the_docs_quote_it() -> None:
    text = COMPOSE.read_text()
    messages = {m["arg"] for m in VAR.finditer(text) if m["op"] == ":?"}
    assert messages == {SECRETS_MESSAGE}
    docs = " ".join((REPO / "docs" / "deployment.md").read_text().split())
    assert re.search(
        rf"required variable ({'|'.join(SECRETS)}) is missing a value: "
        + re.escape(SECRETS_MESSAGE),
        docs,
    )


def test_env_example_ships_no_usable_secret() -> None:
    example = read_env_example()
    for name in (*SECRETS, "GATEWAY_ADMIN_KEY", "CLOUD_LLM_API_KEY"):
        assert example.values.get(name, "") == "", f"{name} has a value in .env.example"
    for name, value in example.values.items():
        assert "change-me" not in value.lower(), name


def test_env_example_documents_every_variable_compose_reads() -> None:
    read = set(variables(COMPOSE.read_text())) | set(variables(CLOUD.read_text()))
    read |= {s["environment"] for s in yaml.safe_load(COMPOSE.read_text())["secrets"].values()}
    documented = read_env_example().names
    assert read - documented == set(), "compose reads variables .env.example does not mention"
    assert documented - read == set(), ".env.example lists variables compose never reads"


def test_env_example_defaults_match_compose() -> None:
    example = read_env_example()
    compose_defaults = defaults(COMPOSE.read_text()) | defaults(CLOUD.read_text())
    for name, value in example.documented_defaults.items():
        # An empty compose default hands the choice to the service (its Settings default,
        # which tests/deploy/test_settings.py compares with .env.example).
        if compose_defaults.get(name, {""}) != {""}:
            assert compose_defaults[name] == {value}, name


def _gateway_settings() -> Any:
    settings = pytest.importorskip("gateway.settings", reason="the gateway package is missing")
    return settings


def test_every_gateway_variable_is_a_gateway_setting(
    stack: dict[str, Any], cloud_stack: dict[str, Any]
) -> None:
    fields = {f"GATEWAY_{name.upper()}" for name in _gateway_settings().Settings.model_fields}
    names = set(environment(services(stack)["gateway"]))
    names |= set(environment(services(cloud_stack)["gateway"]))
    names |= {n for n in read_env_example().names if n.startswith("GATEWAY_")}
    assert names - fields == set()


@pytest.fixture
def clean_gateway_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, CLOUD)], ids=["gpu", "cloud"])
def test_the_gateway_accepts_the_environment_compose_gives_it(
    clean_gateway_env: pytest.MonkeyPatch, files: tuple[Any, ...]
) -> None:
    module = _gateway_settings()
    model = load_compose(*files, env=stack_env())
    for name, value in environment(services(model)["gateway"]).items():
        clean_gateway_env.setenv(name, value)

    settings = module.Settings()

    settings.check_bind_address()  # 0.0.0.0 with keys: allowed
    assert settings.host == "0.0.0.0"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.embedder_url == "http://embedder:8081/v1"
    assert str(settings.data_dir) == "/data"
    cloud = CLOUD in files
    assert settings.llm_url == ("https://api.openai.com/v1" if cloud else "http://vllm:8000/v1")


def test_the_embedder_accepts_the_environment_compose_gives_it(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = pytest.importorskip("embedder.settings", reason="the embedder package is missing")
    env = environment(services(stack)["embedder"])
    fields = {f"EMBEDDER_{name.upper()}" for name in module.EmbedderSettings.model_fields}
    assert {n for n in env if n.startswith("EMBEDDER_")} <= fields
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = module.EmbedderSettings()
    assert (settings.host, settings.port, settings.device) == ("0.0.0.0", 8081, "cpu")


def test_the_cloud_override_replaces_vllm(cloud_stack: dict[str, Any]) -> None:
    assert services(cloud_stack)["vllm"]["profiles"] == ["local-llm"]  # not started by `up`
    gateway = environment(services(cloud_stack)["gateway"])
    assert gateway["GATEWAY_LLM_URL"] == stack_env()["CLOUD_LLM_URL"]
    assert gateway["GATEWAY_LLM_API_KEY"] == stack_env()["CLOUD_LLM_API_KEY"]
    # The cloud stack needs its URL and key, like the secrets of the main file.
    env = stack_env()
    del env["CLOUD_LLM_URL"]
    with pytest.raises(MissingVariable, match="CLOUD_LLM_URL"):
        load_compose(COMPOSE, CLOUD, env=env)


def test_bind_mounts_exist_and_match_the_monitoring_config(stack: dict[str, Any]) -> None:
    binds = {
        m.split(":")[1]: REPO / m.split(":")[0]
        for service in services(stack).values()
        for m in service.get("volumes", [])
        if m.startswith("./")
    }
    for target, source in binds.items():
        assert source.exists(), f"{source} (mounted at {target}) is missing"

    providers = yaml.safe_load(
        (REPO / "monitoring/grafana/provisioning/dashboards/memgate.yml").read_text()
    )["providers"]
    dashboards = binds["/var/lib/grafana/dashboards"]
    assert {p["options"]["path"] for p in providers} == {"/var/lib/grafana/dashboards"}
    assert list(dashboards.glob("*.json")), "no dashboard to provision"

    prometheus = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    ports = {name: _port(service) for name, service in services(stack).items()}
    for job in prometheus["scrape_configs"]:
        for target in (t for c in job["static_configs"] for t in c["targets"]):
            host, _, port = target.partition(":")
            assert ports.get(host) == port, f"Prometheus scrapes {target}: no such service port"
        credentials = job.get("authorization", {}).get("credentials_file")
        if credentials:
            secret = credentials.removeprefix("/run/secrets/")
            assert secret in services(stack)["prometheus"]["secrets"]


def _port(service: dict[str, Any]) -> str | None:
    exposed = service.get("expose") or [p.rsplit(":", 1)[1] for p in service.get("ports", [])]
    return str(exposed[0]) if exposed else None


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$HOME ${SET}", env) == (
        "x d  d $HOME x"
    )
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?needed}", env)
    assert ENV_EXAMPLE.exists()


@pytest.mark.parametrize("override", ["compose.cloud.yaml", "compose.cpu.yaml"])
def test_stacks_without_vllm_do_not_scrape_it(override: str) -> None:
    # Prometheus gets the same scrape config without the vllm job, so `up{job="vllm"}`
    # is not 0 forever where no vLLM runs.
    stack = load_compose(COMPOSE, REPO / override, env=stack_env())
    assert services(stack)["vllm"]["profiles"] == ["local-llm"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services(stack)["prometheus"]["volumes"]}
    config = mounts["/etc/prometheus/prometheus.yml"]
    assert config == "./monitoring/prometheus.without-vllm.yml"
    main = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    cloud = yaml.safe_load((REPO / config).read_text())
    without_vllm = [job for job in main["scrape_configs"] if job["job_name"] != "vllm"]
    assert len(without_vllm) == len(main["scrape_configs"]) - 1
    assert cloud == {**main, "scrape_configs": without_vllm}
    # The rest of Prometheus's volumes are those of the main file.
    main_mounts = {m.split(":")[1] for m in services(load_compose(COMPOSE, env=stack_env()))[
        "prometheus"]["volumes"]}  # fmt: skip
    assert set(mounts) == main_mounts
