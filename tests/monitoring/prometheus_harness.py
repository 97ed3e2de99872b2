"""A real Prometheus for tests: the repo's scrape config, pointed at the test's processes.

Typical use (the traffic test):

    with run_prometheus({"gateway": [gateway_addr], "embedder": [embedder_addr]}) as prom:
        prom.wait_until_targets_up()
        ...generate traffic...
        prom.wait_for_scrapes(2)          # rate() needs two samples after the traffic
        outcomes = evaluate_dashboard(prom)
        assert not [o for o in outcomes if o.error], report(outcomes)
        assert not [o for o in outcomes if o.needs_series(("memgate_", "embedder_"))
                    and not o.series], report(outcomes)

Everything waits on conditions (Prometheus' HTTP API), never on fixed sleeps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO_ROOT / "monitoring" / "prometheus.yml"
DASHBOARD_JSON = REPO_ROOT / "monitoring" / "grafana" / "dashboards" / "memgate.json"
REQUIRE_ENV = "MEMGATE_REQUIRE_PROMETHEUS"
POLL_S = 0.1

T = TypeVar("T")
JSON = dict[str, Any]


class PromQLError(RuntimeError):
    """Prometheus rejected a query (parse error, execution error)."""


# --- finding and starting Prometheus ------------------------------------------


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def require_binary(name: str) -> str:
    """``name`` on PATH; skip the test when missing, or fail when $MEMGATE_REQUIRE_PROMETHEUS=1.

    tools/install_prometheus.sh installs both prometheus and promtool.
    """
    binary = shutil.which(name)
    if binary is None:
        reason = f"{name} is not on PATH (tools/install_prometheus.sh installs it)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    return binary


def require_prometheus() -> str:
    return require_binary("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, detail: Callable[[], str] = str
) -> T:
    """Poll ``condition`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}. {detail()}")
        time.sleep(POLL_S)


def rewrite_scrape_config(
    config: Mapping[str, Any],
    targets: Mapping[str, Sequence[str]],
    *,
    scrape_interval: str = "1s",
    credentials_dir: Path | None = None,
) -> JSON:
    """The repo's config with only the jobs in ``targets``, each scraping the given host:ports.

    Jobs not named are dropped, so "all targets up" means the test's targets. A kept job's
    ``authorization.credentials_file`` is pointed at an (empty) file in ``credentials_dir``.
    """
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    unknown = sorted(set(targets) - set(jobs))
    if unknown:
        raise KeyError(f"jobs {unknown} are not in the scrape config (have {sorted(jobs)})")
    rewritten: JSON = dict(config)
    rewritten["global"] = {
        **config.get("global", {}),
        "scrape_interval": scrape_interval,
        "scrape_timeout": scrape_interval,
        "evaluation_interval": scrape_interval,
    }
    kept: list[JSON] = []
    for name, addresses in targets.items():
        job = {
            k: v for k, v in jobs[name].items() if k not in ("scrape_interval", "scrape_timeout")
        }
        job["static_configs"] = [{"targets": list(addresses)}]
        auth = job.get("authorization")
        if isinstance(auth, dict) and "credentials_file" in auth:
            if credentials_dir is None:
                raise ValueError(f"job {name} reads a credentials file: pass credentials_dir")
            secret = credentials_dir / f"{name}_credentials"
            secret.write_text("test-key\n", encoding="utf-8")
            job["authorization"] = {**auth, "credentials_file": str(secret)}
        kept.append(job)
    rewritten["scrape_configs"] = kept
    return rewritten


@dataclass
class PrometheusServer:
    """A running Prometheus, reached over its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    client: httpx.Client

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _api(self, path: str, data: Mapping[str, str] | None = None) -> Any:
        response = (
            self.client.post(path, data=dict(data)) if data is not None else self.client.get(path)
        )
        try:
            body = response.json()
        except json.JSONDecodeError as exc:
            raise PromQLError(
                f"{path}: HTTP {response.status_code}: {response.text[:300]}"
            ) from exc
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    # queries

    def query(self, expr: str, at: float | None = None) -> JSON:
        """``/api/v1/query``: ``{"resultType": ..., "result": ...}``; PromQLError when rejected."""
        form = {"query": expr}
        if at is not None:
            form["time"] = f"{at:.3f}"
        data: JSON = self._api("/api/v1/query", form)
        return data

    def series(self, expr: str) -> list[JSON]:
        """The instant vector an expression returns (``[]`` when it has no series)."""
        data = self.query(expr)
        if data["resultType"] == "vector":
            result: list[JSON] = data["result"]
            return result
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PromQLError(f"{expr!r} returned a {data['resultType']}, not a vector")

    def wait_for_series(self, expr: str, timeout: float = 30.0) -> list[JSON]:
        return wait_for(
            lambda: self.series(expr) or None, timeout, f"a series from {expr!r}", self.log_tail
        )

    # targets

    def targets(self) -> list[JSON]:
        data = self._api("/api/v1/targets?state=active")
        active: list[JSON] = data["activeTargets"]
        return active

    def _describe_targets(self) -> str:
        return "; ".join(
            f"{t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}"
            for t in self.targets()
        )

    def wait_until_targets_up(self, timeout: float = 30.0) -> list[JSON]:
        """Wait until every active target has been scraped successfully."""

        def all_up() -> list[JSON] | None:
            targets = self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        return wait_for(all_up, timeout, "all scrape targets up", self._describe_targets)

    def wait_for_scrapes(self, count: int = 2, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped ``count`` more times, successfully.

        Call after generating traffic: ``rate()`` needs two samples that include it.
        """
        for _ in range(count):
            since = time.time()

            def scraped_since(since: float = since) -> bool:
                targets = self.targets()
                return bool(targets) and all(
                    t["health"] == "up" and _timestamp(t["lastScrape"]) > since for t in targets
                )

            wait_for(
                scraped_since, timeout, "a fresh scrape of every target", self._describe_targets
            )

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _timestamp(rfc3339: str) -> float:
    # Prometheus writes nanoseconds; datetime takes microseconds.
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339.replace("Z", "+00:00"))
    return datetime.fromisoformat(trimmed).timestamp()


@contextmanager
def run_prometheus(
    targets: Mapping[str, Sequence[str]],
    *,
    config_path: Path = PROMETHEUS_YML,
    scrape_interval: str = "1s",
    startup_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Start Prometheus with the repo's scrape config, ``targets`` as {job: [host:port]}.

    Yields once Prometheus answers ``/-/ready``; stops it (and removes its data) on exit.
    """
    binary = prometheus_binary()
    if binary is None:
        raise FileNotFoundError("prometheus is not on PATH (run tools/install_prometheus.sh)")
    with tempfile.TemporaryDirectory(prefix="memgate-prometheus-") as tmp:
        workdir = Path(tmp)
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        rewritten = rewrite_scrape_config(
            config, targets, scrape_interval=scrape_interval, credentials_dir=workdir
        )
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(rewritten, sort_keys=False), encoding="utf-8")
        port = free_port()
        log_path = workdir / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        url = f"http://127.0.0.1:{port}"
        server = PrometheusServer(url, process, log_path, httpx.Client(base_url=url, timeout=10))
        try:
            wait_for(
                lambda: _ready(server),
                startup_timeout,
                f"Prometheus ready at {url}",
                server.log_tail,
            )
            yield server
        finally:
            server.stop()


def _ready(server: PrometheusServer) -> bool:
    if server.process.poll() is not None:
        raise RuntimeError(
            f"prometheus exited with {server.process.returncode}:\n{server.log_tail()}"
        )
    try:
        return server.client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


# --- the dashboard's expressions ----------------------------------------------

# Grafana's built-in interval variables, in both $name and ${name} forms.
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{(__[a-z_]+)\}|(__[a-z_]+))")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "bool", "offset", "rate", "irate", "increase",
    "histogram_quantile", "vector", "clamp_min", "clamp_max", "topk", "bottomk", "le", "inf",
    "nan", "time", "label_replace", "absent", "delta", "deriv", "scalar", "abs", "round",
}  # fmt: skip


@dataclass(frozen=True)
class DashboardQuery:
    panel: str
    ref_id: str
    expr: str

    @property
    def metric_names(self) -> frozenset[str]:
        """The metric names the expression selects (a heuristic good for our dashboard)."""
        stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", self.expr)
        stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", stripped)
        names = {
            token
            for token in _METRIC_NAME.findall(stripped)
            if token.lower() not in _PROMQL_WORDS and not token.startswith("__")
        }
        return frozenset(names)

    def needs_series(self, prefixes: Sequence[str]) -> bool:
        return any(name.startswith(tuple(prefixes)) for name in self.metric_names)


@dataclass(frozen=True)
class QueryOutcome:
    query: DashboardQuery
    rendered: str
    error: str | None
    series: int

    def needs_series(self, prefixes: Sequence[str]) -> bool:
        return self.query.needs_series(prefixes)

    def __str__(self) -> str:
        status = f"ERROR {self.error}" if self.error else f"{self.series} series"
        return f"[{self.query.panel} / {self.query.ref_id}] {status}: {self.rendered}"


def dashboard_queries(path: Path = DASHBOARD_JSON) -> list[DashboardQuery]:
    """Every target expression of the dashboard, rows' nested panels included."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    queries: list[DashboardQuery] = []

    def visit(panels: list[JSON]) -> None:
        for panel in panels:
            visit(panel.get("panels", []))
            for target in panel.get("targets", []):
                queries.append(
                    DashboardQuery(panel.get("title", ""), target.get("refId", ""), target["expr"])
                )

    visit(dashboard.get("panels", []))
    return queries


def render_grafana_variables(
    expr: str, *, rate_interval: str = "1m", interval: str = "15s", range_: str = "5m"
) -> str:
    """Replace Grafana's interval variables with concrete durations; unknown ones raise."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": interval,
        "__interval_ms": str(_duration_ms(interval)),
        "__range": range_,
        "__range_s": str(_duration_ms(range_) // 1000),
        "__range_ms": str(_duration_ms(range_)),
    }

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    rendered = _GRAFANA_VARIABLE.sub(substitute, expr)
    if "$" in rendered:
        raise ValueError(f"unrendered template variable in {rendered!r}")
    return rendered


def _duration_ms(duration: str) -> int:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    if match is None:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(match.group(1)) * units[match.group(2)]


def evaluate_dashboard(
    server: PrometheusServer,
    queries: Sequence[DashboardQuery] | None = None,
    *,
    rate_interval: str = "1m",
) -> list[QueryOutcome]:
    """Evaluate each dashboard expression through ``/api/v1/query``; errors are collected."""
    outcomes: list[QueryOutcome] = []
    for query in dashboard_queries() if queries is None else queries:
        rendered = render_grafana_variables(query.expr, rate_interval=rate_interval)
        try:
            found = len(server.series(rendered))
            outcomes.append(QueryOutcome(query, rendered, None, found))
        except PromQLError as exc:
            outcomes.append(QueryOutcome(query, rendered, str(exc), 0))
    return outcomes


def report(outcomes: Sequence[QueryOutcome]) -> str:
    return "\n".join(str(outcome) for outcome in outcomes)
