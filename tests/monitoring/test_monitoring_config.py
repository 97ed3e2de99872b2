"""Static checks of monitoring/: scrape config, Grafana provisioning, the dashboard JSON.

Fast and without a running Prometheus; `promtool` checks run when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_harness import (
    DASHBOARD_JSON,
    PROMETHEUS_YML,
    REPO_ROOT,
    dashboard_queries,
    require_binary,
    rewrite_scrape_config,
)

MONITORING = REPO_ROOT / "monitoring"
DATASOURCES_YML = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARDS_YML = MONITORING / "grafana" / "provisioning" / "dashboards" / "memgate.yml"
BUILD_SCRIPT = MONITORING / "build_dashboard.py"
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")

EXPECTED_TARGETS = {
    "gateway": "gateway:8080",
    "embedder": "embedder:8081",
    "vllm": "vllm:8000",
    "qdrant": "qdrant:6333",
}
REQUIRED_ROWS = (
    "Traffic",
    "Latency",
    "Upstream health & failover",
    "Memory",
    "Embedder",
    "Outbox",
    "vLLM engine",
)
# The metric families the gateway and embedder export (issue 4's contract).
CONTRACT_FAMILIES = frozenset(
    (
        "memgate_http_requests_total",
        "memgate_http_request_duration_seconds",
        "memgate_http_requests_in_flight",
        "memgate_model_requests_total",
        "memgate_upstream_requests_total",
        "memgate_upstream_request_duration_seconds",
        "memgate_upstream_time_to_first_token_seconds",
        "memgate_upstream_retries_total",
        "memgate_upstream_fallbacks_total",
        "memgate_upstream_tokens_total",
        "memgate_upstream_state",
        "memgate_upstream_breaker_state",
        "memgate_memory_recall_duration_seconds",
        "memgate_memory_recalls_total",
        "memgate_memory_recall_hits",
        "memgate_memory_writes_total",
        "memgate_outbox_depth",
        "memgate_outbox_replays_total",
        "memgate_outbox_dead",
        "memgate_read_your_writes_timeouts_total",
        "memgate_embedder_client_request_duration_seconds",
        "memgate_embedder_client_errors_total",
        "memgate_gateway_overhead_seconds",
        "memgate_dependency_ready",
        "embedder_requests_total",
        "embedder_request_duration_seconds",
        "embedder_batch_size",
        "embedder_queue_wait_seconds",
        "embedder_inference_duration_seconds",
        "embedder_inputs_total",
        "embedder_model_info",
    )
)
# vLLM's current (v0.10+) names; the deprecated ones must not come back.
VLLM_METRICS = frozenset(
    (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
    )
)
VLLM_DEPRECATED = ("vllm:gpu_cache_usage_perc", "vllm:time_per_output_token_seconds")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat: list[dict[str, Any]] = []
    for panel in panels:
        flat.append(panel)
        flat.extend(all_panels(panel.get("panels", [])))
    return flat


def family_of(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def dashboard_metric_names() -> set[str]:
    return {name for query in dashboard_queries() for name in query.metric_names}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, f"unsupported duration {duration!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def promtool() -> str:
    return require_binary("promtool")


# --- prometheus.yml -------------------------------------------------------------


def test_prometheus_config_scrapes_the_four_services() -> None:
    config = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(EXPECTED_TARGETS) <= set(jobs)
    for name, target in EXPECTED_TARGETS.items():
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics", name
        assert [t for sc in job["static_configs"] for t in sc["targets"]] == [target], name
        interval = seconds(job.get("scrape_interval", config["global"]["scrape_interval"]))
        assert 5 <= interval <= 15, f"{name}: scrape interval {interval}s"


def test_qdrant_key_comes_from_a_file_never_inline() -> None:
    qdrant = next(
        j for j in load_yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "qdrant"
    )
    auth = qdrant["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert PurePosixPath(auth["credentials_file"]).is_absolute()
    assert "credentials" not in auth and "bearer_token" not in qdrant


def test_promtool_accepts_the_repo_config_syntax() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_config_with_its_key_file_present(tmp_path: Path) -> None:
    # The full check also reads the credentials file, which only compose provides:
    # point it at a temporary one and check everything else as written.
    config = load_yaml(PROMETHEUS_YML)
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    checked = rewrite_scrape_config(
        config,
        targets,
        scrape_interval=config["global"]["scrape_interval"],
        credentials_dir=tmp_path,
    )
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(checked, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    # Proves the two checks above can fail.
    path = tmp_path / "prometheus.yml"
    path.write_text(
        "scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n", encoding="utf-8"
    )
    result = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


# --- the dashboard ----------------------------------------------------------------


def test_dashboard_identity() -> None:
    board = dashboard()
    assert board["uid"] == "memgate"
    assert board["schemaVersion"] >= 36
    assert board["title"]


def test_every_panel_queries_the_provisioned_datasource() -> None:
    panels = all_panels(dashboard()["panels"])
    queried = [p for p in panels if p["type"] != "row"]  # rows only group panels
    assert queried
    for panel in queried:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            assert target["expr"].strip(), f"{panel['title']} {target['refId']}: empty expr"


def test_panel_ids_are_unique_and_panels_fit_the_grid() -> None:
    panels = all_panels(dashboard()["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


def test_required_rows_exist_and_hold_panels() -> None:
    panels = dashboard()["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == list(REQUIRED_ROWS)
    counts: dict[str, int] = {}
    current = None
    for panel in panels:
        if panel["type"] == "row":
            current = panel["title"]
            counts[current] = len(panel.get("panels", []))  # collapsed rows nest them
        elif current is not None:
            counts[current] += 1
    assert all(counts[row] > 0 for row in REQUIRED_ROWS), counts


def test_rates_use_the_rate_interval_variable() -> None:
    for query in dashboard_queries():
        ranges = re.findall(r"\[([^\]]+)\]", query.expr)
        assert all(r == "$__rate_interval" for r in ranges), f"{query.panel}: {query.expr}"


def test_dashboard_covers_every_gateway_and_embedder_family() -> None:
    used = {family_of(name) for name in dashboard_metric_names()}
    missing = sorted(CONTRACT_FAMILIES - used)
    assert not missing, f"metric families without a panel: {missing}"


def test_dashboard_uses_only_metrics_the_code_registers() -> None:
    # Catches typos and renames: every memgate_*/embedder_* name on the dashboard must
    # be one the gateway's or embedder's metrics module registers, and vice versa.
    gateway_metrics = pytest.importorskip("gateway.metrics")
    embedder_metrics = pytest.importorskip("embedder.metrics")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    gateway_metrics.GatewayMetrics(registry)
    embedder_metrics.EmbedderMetrics(registry)
    registered = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
    used = {
        family_of(name)
        for name in dashboard_metric_names()
        if name.startswith(("memgate_", "embedder_"))
    }
    assert not used - registered, f"on the dashboard but not exported: {sorted(used - registered)}"
    assert not registered - used, f"exported but not on the dashboard: {sorted(registered - used)}"
    assert registered == CONTRACT_FAMILIES, "the contract list above is out of date"


def test_dashboard_uses_current_vllm_metric_names() -> None:
    names = dashboard_metric_names()
    assert not VLLM_METRICS - names, f"missing vLLM metrics: {sorted(VLLM_METRICS - names)}"
    exprs = " ".join(query.expr for query in dashboard_queries())
    assert not [old for old in VLLM_DEPRECATED if old in exprs]


def test_dashboard_json_is_what_the_build_script_generates() -> None:
    spec = importlib.util.spec_from_file_location("build_dashboard", BUILD_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_dashboard"] = module
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD_JSON.read_text(encoding="utf-8"), (
        "memgate.json is stale: run python monitoring/build_dashboard.py"
    )


# --- Grafana provisioning -----------------------------------------------------------


def test_datasource_provisioning_matches_the_dashboard_and_scrape_interval() -> None:
    [datasource] = load_yaml(DATASOURCES_YML)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    # $__rate_interval is derived from this; it must be Prometheus' real scrape interval.
    scrape_interval = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval


def test_dashboard_provider_loads_the_dashboard_folder() -> None:
    [provider] = load_yaml(DASHBOARDS_YML)["providers"]
    assert provider["type"] == "file"
    assert PurePosixPath(provider["options"]["path"]).is_absolute()
    # The provider loads a folder: the dashboard must be the only JSON there.
    assert sorted(p.name for p in DASHBOARD_JSON.parent.glob("*.json")) == ["memgate.json"]


def _compose() -> dict[str, Any]:
    for name in COMPOSE_FILES:
        if (REPO_ROOT / name).exists():
            loaded: dict[str, Any] = load_yaml(REPO_ROOT / name)
            return loaded
    pytest.skip(f"no compose file yet ({', '.join(COMPOSE_FILES)}): nothing to cross-check")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """{container path: host path (normalised, relative to the repo)} of bind mounts."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        mounts[target.rstrip("/")] = source.removeprefix("./").rstrip("/")
    return mounts


def test_compose_mounts_match_the_provisioning_paths() -> None:
    services = _compose()["services"]
    provider_path = load_yaml(DASHBOARDS_YML)["providers"][0]["options"]["path"]
    grafana = _mounts(services["grafana"])
    assert grafana.get(provider_path) == "monitoring/grafana/dashboards", grafana
    assert grafana.get("/etc/grafana/provisioning") == "monitoring/grafana/provisioning", grafana
    prometheus = services["prometheus"]
    assert _mounts(prometheus).get("/etc/prometheus/prometheus.yml") == "monitoring/prometheus.yml"
    qdrant = next(
        j for j in load_yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "qdrant"
    )
    key_path = qdrant["authorization"]["credentials_file"]
    secret_paths = set()
    for secret in prometheus.get("secrets", []):
        name = secret if isinstance(secret, str) else secret.get("target") or secret["source"]
        secret_paths.add(name if name.startswith("/") else f"/run/secrets/{name}")
    assert key_path in secret_paths | set(_mounts(prometheus)), (
        f"compose gives Prometheus no file at {key_path}"
    )
