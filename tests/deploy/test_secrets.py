"""Placeholder and short secrets stop the gateway; tools/gen_env.py writes strong ones."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import COMPOSE, ENV_EXAMPLE, REPO, environment, load_compose, load_tool

secret_strength = pytest.importorskip("gateway.secret_strength", reason="the gateway package")
settings_module = pytest.importorskip("gateway.settings", reason="the gateway package")

# What `cp .env.example .env` gave before: publicly known values.
OLD_EXAMPLE = {
    "GATEWAY_API_KEYS": "default:change-me-gateway-key",
    "GATEWAY_QDRANT_API_KEY": "change-me-qdrant-key",
}


def run_gateway(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
        env={**clean, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_PORT": "0", **env},
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (OLD_EXAMPLE, ["GATEWAY_API_KEYS (tenant 'default': a placeholder)",
                       "GATEWAY_QDRANT_API_KEY (a placeholder)"]),
        ({"GATEWAY_API_KEYS": "acme:k3y-9"},
         ["GATEWAY_API_KEYS (tenant 'acme': shorter than 16 characters)"]),
        ({"GATEWAY_ADMIN_KEY": "CHANGEME-admin-key-long-enough"}, ["GATEWAY_ADMIN_KEY"]),
        ({"GATEWAY_LLM_API_KEY": "change-me-cloud-llm-key"}, ["GATEWAY_LLM_API_KEY"]),
    ],
)  # fmt: skip
def test_the_gateway_refuses_weak_secrets_with_one_line(
    env: dict[str, str], named: list[str], tmp_path: Path
) -> None:
    result = run_gateway(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memgate: configuration error: refusing to start with weak")
    for name in named:
        assert name in lines[0]
    assert "tools/gen_env.py" in lines[0] and "GATEWAY_ALLOW_WEAK_SECRETS=true" in lines[0]
    for value in env.values():  # names the setting, never shows the secret
        assert value.partition(":")[2] not in lines[0] if ":" in value else value not in lines[0]


SHARED = "shared-key-0123456789abc"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_API_KEYS": f"acme:{SHARED},globex:{SHARED}"},
         "GATEWAY_API_KEYS: tenants 'acme' and 'globex' have the same key"),
        # Not a weak secret that the operator may allow: a key opening two doors.
        ({"GATEWAY_API_KEYS": f"acme:{SHARED}", "GATEWAY_ADMIN_KEY": SHARED,
          "GATEWAY_ALLOW_WEAK_SECRETS": "true"},
         "GATEWAY_ADMIN_KEY is also the key of tenant 'acme'"),
    ],
    ids=["two tenants", "admin and tenant"],
)  # fmt: skip
def test_the_gateway_refuses_a_key_given_twice_with_one_line(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    result = run_gateway(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memgate: configuration error: ") and named in lines[0]
    assert SHARED not in result.stderr + result.stdout  # names tenants, never the key


def test_weak_secrets_are_allowed_when_the_operator_says_so() -> None:
    settings = settings_module.Settings(**OLD_EXAMPLE_FIELDS, allow_weak_secrets=True)
    secret_strength.check_secrets(settings)  # no error
    with pytest.raises(ValueError, match="weak secrets"):
        secret_strength.check_secrets(settings_module.Settings(**OLD_EXAMPLE_FIELDS))


OLD_EXAMPLE_FIELDS = {"api_keys": "default:change-me-gateway-key"}


@pytest.mark.parametrize(
    "value",
    ["change-me", "Change-Me-Now-Please-1234", "changeme-xxxxxxxxxxxxxxxx",
     "<your key here>", "your-api-key-goes-here-123", "replace-me-with-a-key"],
)  # fmt: skip
def test_placeholders_are_weak_whatever_their_length(value: str) -> None:
    assert secret_strength.weakness(value) == "a placeholder"


def test_strong_keys_and_digests_pass() -> None:
    digest = "sha256:" + "0" * 64
    settings = settings_module.Settings(
        api_keys=f"a:{'k' * 16},b:{digest}", admin_key="x" * 40, qdrant_api_key="q" * 16
    )
    assert secret_strength.weak_secrets(settings) == []


def test_gen_env_writes_strong_secrets_the_gateway_and_compose_accept(tmp_path: Path) -> None:
    output = tmp_path / ".env"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_env.py"), "--output", str(output),
         "--tenant", "acme"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    values = load_tool("env_file").parse(output.read_text())
    example = load_tool("env_file").parse(ENV_EXAMPLE.read_text())
    assert set(values) == set(example)  # every line of the example, secrets filled in
    assert values["GATEWAY_API_KEYS"].startswith("acme:")
    secrets = ("GATEWAY_API_KEYS", "GATEWAY_ADMIN_KEY", "QDRANT_API_KEY", "GRAFANA_ADMIN_PASSWORD")
    assert len({values[name].partition(":")[2] or values[name] for name in secrets}) == 4
    # compose starts with it (the cloud key is the operator's) and the gateway accepts it.
    stack = load_compose(COMPOSE, env=values)
    gateway = environment(stack["services"]["gateway"])
    settings = settings_module.Settings(
        api_keys=gateway["GATEWAY_API_KEYS"],
        admin_key=gateway["GATEWAY_ADMIN_KEY"],
        qdrant_api_key=gateway["GATEWAY_QDRANT_API_KEY"],
    )
    assert secret_strength.weak_secrets(settings) == []
    # A second run keeps the file: secrets are not rotated by accident.
    again = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gen_env.py"), "--output", str(output)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert load_tool("env_file").parse(output.read_text()) == values


def test_the_quick_start_uses_gen_env() -> None:
    docs = (REPO / "docs" / "deployment.md").read_text()
    quick_start = docs[docs.index("## Quick start") :].split("```sh\n")[1].split("```")[0]
    assert quick_start.startswith("python3 tools/gen_env.py")
    assert "cp .env.example" not in quick_start and "Bearer change-me" not in docs
