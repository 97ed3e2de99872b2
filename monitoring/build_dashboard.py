"""Generate the memgate Grafana dashboard (monitoring/grafana/dashboards/memgate.json).

Standard library only. The JSON is committed; this script is its source:

    python monitoring/build_dashboard.py          # rewrite the JSON
    python monitoring/build_dashboard.py --check  # exit 1 if the JSON is stale

Every query goes to the Prometheus datasource with uid ``prometheus`` (provisioned
by monitoring/grafana/provisioning/datasources/prometheus.yml). Rates use
``$__rate_interval``, which Grafana derives from the datasource's scrape interval.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
OUTPUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "memgate.json"
GRID_WIDTH = 24
PANEL_HEIGHT = 8
RI = "$__rate_interval"

JSON = dict[str, Any]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | state-timeline
    width: int = 8
    description: str = ""
    mappings: tuple[tuple[str, str, str], ...] = ()  # (value, text, color)
    min_zero: bool = True


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


# --- PromQL helpers -----------------------------------------------------------


def rate(selector: str, by: str = "") -> str:
    """``sum [by (...)] (rate(selector[$__rate_interval]))``."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({selector}[{RI}]))"


def quantile(q: float, histogram: str, by: str = "", matchers: str = "") -> str:
    """``histogram_quantile`` over a prometheus-client histogram's ``_bucket`` series."""
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, {rate(f'{histogram}_bucket{matchers}', labels)})"


def quantiles(
    histogram: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99), by: str = ""
) -> tuple[Query, ...]:
    prefix = "".join(f"{{{{{label.strip()}}}}} " for label in by.split(",") if label.strip())
    return tuple(
        Query(quantile(q, histogram, by), f"{prefix}p{round(q * 100)}".strip()) for q in qs
    )


def average(histogram: str) -> str:
    return f"{rate(f'{histogram}_sum')} / {rate(f'{histogram}_count')}"


def ratio(part: str, whole: str) -> str:
    """Share of ``whole``'s rate matching ``part``; 0, not empty, when ``part`` has no series."""
    return f"({rate(part)} or vector(0)) / {rate(whole)}"


def one_hot(metric: str, weights: dict[str, int]) -> str:
    """Fold a one-hot ``{state=...}`` gauge into one number per upstream.

    ``or`` keeps the expression working when a state's series is absent.
    """
    terms = " or ".join(f'{metric}{{state="{state}"}} * {w}' for state, w in weights.items())
    return f"sum by (upstream) ({terms})"


# --- the dashboard ------------------------------------------------------------

UPSTREAM_STATE_MAP = (
    ("0", "unhealthy", "red"),
    ("1", "starting", "yellow"),
    ("2", "healthy", "green"),
)
BREAKER_STATE_MAP = (("0", "closed", "green"), ("1", "half_open", "yellow"), ("2", "open", "red"))
READY_MAP = (("0", "not ready", "red"), ("1", "ready", "green"))
UP_MAP = (("0", "down", "red"), ("1", "up", "green"))

HTTP = "memgate_http_requests_total"
HTTP_5XX = 'memgate_http_requests_total{status=~"5.."}'
HTTP_4XX = 'memgate_http_requests_total{status=~"4.."}'
RECALLS = "memgate_memory_recalls_total"
RECALL_HITS = 'memgate_memory_recalls_total{outcome="hit"}'

ROWS: tuple[Row, ...] = (
    Row(
        "Traffic",
        (
            Panel(
                "Requests/s by route and status",
                (Query(rate(HTTP, "route, status"), "{{route}} {{status}}"),),
                unit="reqps",
                width=12,
            ),
            Panel(
                "Error rate",
                (Query(ratio(HTTP_5XX, HTTP), "5xx"), Query(ratio(HTTP_4XX, HTTP), "4xx")),
                unit="percentunit",
                width=6,
                description="Share of HTTP responses with a 5xx (or 4xx) status.",
            ),
            Panel(
                "Requests in flight",
                (Query("sum(memgate_http_requests_in_flight)", "in flight"),),
                width=6,
            ),
        ),
    ),
    Row(
        "Latency",
        (
            Panel(
                "HTTP latency (all routes)",
                quantiles("memgate_http_request_duration_seconds"),
                unit="s",
            ),
            Panel(
                "HTTP latency p95 by route",
                (
                    Query(
                        quantile(0.95, "memgate_http_request_duration_seconds", "route"),
                        "{{route}}",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Gateway overhead (total minus upstream time)",
                quantiles("memgate_gateway_overhead_seconds"),
                unit="s",
                description="Time the gateway itself adds: recall, prompt building, proxying.",
            ),
        ),
    ),
    Row(
        "Upstream health & failover",
        (
            Panel(
                "Upstream state",
                (
                    Query(
                        one_hot(
                            "memgate_upstream_state",
                            {"healthy": 2, "starting": 1, "unhealthy": 0},
                        ),
                        "{{upstream}}",
                    ),
                ),
                kind="state-timeline",
                mappings=UPSTREAM_STATE_MAP,
            ),
            Panel(
                "Circuit breaker",
                (
                    Query(
                        one_hot(
                            "memgate_upstream_breaker_state",
                            {"open": 2, "half_open": 1, "closed": 0},
                        ),
                        "{{upstream}}",
                    ),
                ),
                kind="state-timeline",
                mappings=BREAKER_STATE_MAP,
            ),
            Panel(
                "Dependencies ready",
                (Query("max by (dependency) (memgate_dependency_ready)", "{{dependency}}"),),
                kind="state-timeline",
                mappings=READY_MAP,
            ),
            Panel(
                "Requests/s by model",
                (
                    Query(
                        rate("memgate_model_requests_total", "model, upstream, outcome"),
                        "{{model}} → {{upstream}} {{outcome}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Upstream requests/s by outcome",
                (
                    Query(
                        rate("memgate_upstream_requests_total", "upstream, outcome"),
                        "{{upstream}} {{outcome}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Retries and fallbacks/s",
                (
                    Query(rate("memgate_upstream_retries_total", "upstream"), "retry {{upstream}}"),
                    Query(
                        rate("memgate_upstream_fallbacks_total", "upstream"),
                        "served by fallback {{upstream}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Scrape targets up",
                (Query('up{job=~"gateway|embedder|vllm|qdrant"}', "{{job}} {{instance}}"),),
                kind="state-timeline",
                mappings=UP_MAP,
                description="vLLM stays down while it loads its model.",
            ),
            Panel(
                "Upstream latency",
                quantiles("memgate_upstream_request_duration_seconds", (0.5, 0.95), "upstream"),
                unit="s",
            ),
            Panel(
                "Upstream time to first token",
                quantiles("memgate_upstream_time_to_first_token_seconds", (0.5, 0.95), "upstream"),
                unit="s",
            ),
            Panel(
                "Upstream tokens/s",
                (
                    Query(
                        rate("memgate_upstream_tokens_total", "upstream, kind"),
                        "{{upstream}} {{kind}}",
                    ),
                ),
                unit="short",
                description="Prompt and completion tokens, from the upstream's usage.",
            ),
        ),
    ),
    Row(
        "Memory",
        (
            Panel(
                "Recall latency",
                quantiles("memgate_memory_recall_duration_seconds", (0.5, 0.95)),
                unit="s",
                width=6,
            ),
            Panel(
                "Recall hit rate",
                (Query(ratio(RECALL_HITS, RECALLS), "hit rate"),),
                unit="percentunit",
                width=6,
            ),
            Panel(
                "Recalls/s by outcome",
                (Query(rate("memgate_memory_recalls_total", "outcome"), "{{outcome}}"),),
                unit="ops",
                width=6,
            ),
            Panel(
                "Memories injected per recall",
                (
                    Query(average("memgate_memory_recall_hits"), "mean"),
                    Query(quantile(0.95, "memgate_memory_recall_hits"), "p95"),
                ),
                width=6,
            ),
            Panel(
                "Memory writes/s by outcome",
                (
                    Query(
                        rate("memgate_memory_writes_total", "source, outcome"),
                        "{{source}} {{outcome}}",
                    ),
                ),
                unit="ops",
                width=24,
            ),
        ),
    ),
    Row(
        "Embedder",
        (
            Panel(
                "Embedder requests/s by status",
                (Query(rate("embedder_requests_total", "status"), "{{status}}"),),
                unit="reqps",
                width=6,
            ),
            Panel(
                "Texts embedded/s",
                (Query(rate("embedder_inputs_total"), "texts"),),
                unit="ops",
                width=6,
            ),
            Panel(
                "Embedder request latency (server side)",
                quantiles("embedder_request_duration_seconds"),
                unit="s",
                width=6,
            ),
            Panel(
                "Model",
                (
                    Query(
                        "max by (model, dimension) (embedder_model_info)",
                        "{{model}} ({{dimension}}d)",
                    ),
                ),
                kind="stat",
                width=6,
            ),
            Panel(
                "Batch size (texts per encode)",
                (
                    Query(average("embedder_batch_size"), "mean"),
                    Query(quantile(0.95, "embedder_batch_size"), "p95"),
                ),
                width=8,
            ),
            Panel(
                "Queue wait",
                quantiles("embedder_queue_wait_seconds", (0.5, 0.95)),
                unit="s",
                width=8,
            ),
            Panel(
                "Inference time",
                quantiles("embedder_inference_duration_seconds", (0.5, 0.95)),
                unit="s",
                width=8,
            ),
            Panel(
                "Gateway → embedder latency (client side)",
                quantiles("memgate_embedder_client_request_duration_seconds"),
                unit="s",
                width=12,
            ),
            Panel(
                "Gateway → embedder errors/s",
                (
                    Query(
                        rate("memgate_embedder_client_errors_total", "kind"),
                        "{{kind}}",
                    ),
                ),
                unit="ops",
                width=12,
            ),
        ),
    ),
    Row(
        "Outbox",
        (
            Panel(
                "Outbox depth, and writes set aside (dead)",
                (
                    Query("sum(memgate_outbox_depth)", "waiting writes"),
                    Query("sum(memgate_outbox_dead)", "dead (GET /admin/outbox)"),
                ),
                width=8,
            ),
            Panel(
                "Outbox replays/s by outcome",
                (Query(rate("memgate_outbox_replays_total", "outcome"), "{{outcome}}"),),
                unit="ops",
                width=8,
            ),
            Panel(
                "Read-your-writes waits given up/s",
                (
                    Query(
                        rate("memgate_read_your_writes_timeouts_total"),
                        "gave up waiting for the user's queued writes",
                    ),
                ),
                unit="ops",
                width=8,
            ),
        ),
    ),
    Row(
        "vLLM engine",
        (
            Panel(
                "Requests running / waiting",
                (
                    Query(
                        "sum by (model_name) (vllm:num_requests_running)", "running {{model_name}}"
                    ),
                    Query(
                        "sum by (model_name) (vllm:num_requests_waiting)", "waiting {{model_name}}"
                    ),
                ),
            ),
            Panel(
                "KV cache usage",
                (Query("max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}"),),
                unit="percentunit",
            ),
            Panel(
                "Finished requests/s by reason",
                (
                    Query(
                        rate("vllm:request_success_total", "finished_reason"),
                        "{{finished_reason}}",
                    ),
                ),
                unit="reqps",
            ),
            Panel(
                "Time to first token",
                quantiles("vllm:time_to_first_token_seconds", (0.5, 0.95, 0.99)),
                unit="s",
            ),
            Panel(
                "Inter-token latency",
                quantiles("vllm:inter_token_latency_seconds", (0.5, 0.95, 0.99)),
                unit="s",
            ),
            Panel(
                "End-to-end request latency",
                quantiles("vllm:e2e_request_latency_seconds", (0.5, 0.95, 0.99)),
                unit="s",
            ),
            Panel(
                "Token throughput",
                (
                    Query(rate("vllm:prompt_tokens_total"), "prompt tokens/s"),
                    Query(rate("vllm:generation_tokens_total"), "generation tokens/s"),
                ),
                width=24,
            ),
        ),
    ),
)


# --- rendering ----------------------------------------------------------------


def _field_config(panel: Panel) -> JSON:
    defaults: JSON = {"unit": panel.unit}
    if panel.min_zero and panel.kind == "timeseries":
        defaults["min"] = 0
    if panel.mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    value: {"text": text, "color": color, "index": index}
                    for index, (value, text, color) in enumerate(panel.mappings)
                },
            }
        ]
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "text", "value": None}]}
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> JSON:
    if panel.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "name",
            "colorMode": "none",
            "graphMode": "none",
        }
    if panel.kind == "state-timeline":
        return {"showValue": "never", "mergeValues": True, "legend": {"showLegend": False}}
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> JSON:
    targets = [
        {
            "datasource": dict(DATASOURCE),
            "refId": chr(ord("A") + index),
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "range": True,
        }
        for index, query in enumerate(panel.queries)
    ]
    body: JSON = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": dict(DATASOURCE),
        "gridPos": {"h": PANEL_HEIGHT, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": _options(panel),
        "targets": targets,
    }
    if panel.description:
        body["description"] = panel.description
    return body


def build_panels(rows: tuple[Row, ...] = ROWS) -> list[JSON]:
    """Lay rows and panels out on Grafana's 24-column grid, left to right."""
    panels: list[JSON] = []
    next_id = 1
    y = 0
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x = 0
                y += PANEL_HEIGHT
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
        y += PANEL_HEIGHT
    return panels


def build_dashboard() -> JSON:
    return {
        "uid": "memgate",
        "title": "memgate",
        "description": "Memory-augmented chat gateway: traffic, latency, upstreams, memory, "
        "embedder, outbox and the vLLM engine.",
        "tags": ["memgate", "llm", "vllm"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "templating": {"list": []},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [],
        "panels": build_panels(),
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python monitoring/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
