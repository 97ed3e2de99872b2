"""Every PromQL expression of the dashboard, evaluated by a real Prometheus.

No gateway or embedder runs here: two tiny in-test exporters serve a text exposition
with some of their metric families (counters that grow on every scrape), which proves
the harness end to end. The traffic test against the real processes builds on the same
harness (see prometheus_harness.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_harness import (
    DashboardQuery,
    PrometheusServer,
    PromQLError,
    dashboard_queries,
    evaluate_dashboard,
    render_grafana_variables,
    report,
    require_prometheus,
    run_prometheus,
    wait_for,
)

ROUTE = "/v1/chat/completions"


def gateway_exposition(n: int) -> str:
    """A few gateway families; counters and histograms grow with the scrape number ``n``."""
    buckets = "\n".join(
        f'memgate_http_request_duration_seconds_bucket{{route="{ROUTE}",method="POST",le="{le}"}}'
        f" {n * share}"
        for le, share in (("0.1", 1), ("0.5", 3), ("1.0", 4), ("+Inf", 4))
    )
    return f"""\
# HELP memgate_http_requests_total HTTP requests answered.
# TYPE memgate_http_requests_total counter
memgate_http_requests_total{{route="{ROUTE}",method="POST",status="200"}} {n * 4}
memgate_http_requests_total{{route="{ROUTE}",method="POST",status="503"}} {n}
# HELP memgate_http_request_duration_seconds HTTP request latency.
# TYPE memgate_http_request_duration_seconds histogram
{buckets}
memgate_http_request_duration_seconds_sum{{route="{ROUTE}",method="POST"}} {n * 1.5}
memgate_http_request_duration_seconds_count{{route="{ROUTE}",method="POST"}} {n * 4}
# HELP memgate_http_requests_in_flight HTTP requests being served.
# TYPE memgate_http_requests_in_flight gauge
memgate_http_requests_in_flight 2
# HELP memgate_upstream_state 1 for the upstream's current health state.
# TYPE memgate_upstream_state gauge
memgate_upstream_state{{upstream="local",state="starting"}} 0
memgate_upstream_state{{upstream="local",state="healthy"}} 1
memgate_upstream_state{{upstream="local",state="unhealthy"}} 0
# HELP memgate_outbox_depth Memory writes waiting in the durable outbox.
# TYPE memgate_outbox_depth gauge
memgate_outbox_depth 3
# HELP memgate_outbox_dead Memory writes set aside because they can never be stored.
# TYPE memgate_outbox_dead gauge
memgate_outbox_dead 1
"""


def embedder_exposition(n: int) -> str:
    return f"""\
# HELP embedder_requests_total Embedding requests, by HTTP status.
# TYPE embedder_requests_total counter
embedder_requests_total{{status="200"}} {n * 2}
# HELP embedder_inputs_total Texts embedded.
# TYPE embedder_inputs_total counter
embedder_inputs_total {n * 10}
# HELP embedder_model_info The loaded model.
# TYPE embedder_model_info gauge
embedder_model_info{{model="all-MiniLM-L6-v2",dimension="384"}} 1
"""


# The expressions these exporters must make return series, and the ones they cannot.
SERVED_PANELS = {
    "Requests/s by route and status",
    "Error rate",
    "Requests in flight",
    "HTTP latency (all routes)",
    "HTTP latency p95 by route",
    "Upstream state",
    "Outbox depth, and writes set aside (dead)",
    "Embedder requests/s by status",
    "Texts embedded/s",
    "Model",
}


class Exporter:
    """A /metrics endpoint on 127.0.0.1 serving ``render(scrape_number)``."""

    def __init__(self, render: Callable[[int], str]) -> None:
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                exporter.scrapes += 1
                body = render(exporter.scrapes).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def __enter__(self) -> Exporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    require_prometheus()
    with (
        Exporter(gateway_exposition) as gateway,
        Exporter(embedder_exposition) as embedder,
        run_prometheus({"gateway": [gateway.address], "embedder": [embedder.address]}) as prom,
    ):
        prom.wait_until_targets_up()
        prom.wait_for_scrapes(2)
        yield prom


def test_every_dashboard_expression_is_valid_promql(prometheus: PrometheusServer) -> None:
    outcomes = evaluate_dashboard(prometheus)
    assert len(outcomes) == len(dashboard_queries()) > 0
    failed = [outcome for outcome in outcomes if outcome.error]
    assert not failed, "invalid dashboard expressions:\n" + report(failed)


def test_expressions_over_scraped_metrics_return_series(prometheus: PrometheusServer) -> None:
    served = [q for q in dashboard_queries() if q.panel in SERVED_PANELS]
    assert {q.panel for q in served} == SERVED_PANELS, "panel titles changed"
    outcomes = evaluate_dashboard(prometheus, served)
    empty = [outcome for outcome in outcomes if outcome.error or not outcome.series]
    assert not empty, "expressions without series:\n" + report(outcomes)


def test_rates_and_folded_states_have_the_expected_values(prometheus: PrometheusServer) -> None:
    # Counters grow on every scrape, so rates are positive; 1 of 5 responses is a 503.
    by_status = {
        s["metric"]["status"]: float(s["value"][1])
        for s in prometheus.series(
            'sum by (status) (rate(memgate_http_requests_total{route="/v1/chat/completions"}[1m]))'
        )
    }
    assert by_status["200"] > 0 and by_status["503"] > 0
    error_rate = next(q for q in dashboard_queries() if q.panel == "Error rate" and q.ref_id == "A")
    [series] = prometheus.series(render_grafana_variables(error_rate.expr))
    assert float(series["value"][1]) == pytest.approx(0.2)
    state = next(q for q in dashboard_queries() if q.panel == "Upstream state")
    [folded] = prometheus.series(render_grafana_variables(state.expr))
    assert folded["metric"] == {"upstream": "local"}
    assert float(folded["value"][1]) == 2  # healthy


def test_harness_reports_invalid_and_empty_expressions(prometheus: PrometheusServer) -> None:
    with pytest.raises(PromQLError, match="bad_data"):
        prometheus.query("sum(rate(memgate_http_requests_total[1m])")
    broken = DashboardQuery("broken", "A", "sum by (route (memgate_http_requests_total)")
    absent = DashboardQuery(
        "absent", "B", "sum(rate(memgate_not_exported_total[$__rate_interval]))"
    )
    bad, empty = evaluate_dashboard(prometheus, [broken, absent])
    assert bad.error is not None
    assert empty.error is None and empty.series == 0 and empty.needs_series(["memgate_"])


def test_waiting_for_a_dead_target_times_out_with_its_error() -> None:
    require_prometheus()
    with Exporter(gateway_exposition) as exporter:
        dead = exporter.address  # closed again: nothing listens there any more
    with run_prometheus({"gateway": [dead]}) as prom:
        wait_for(
            lambda: [t for t in prom.targets() if t["health"] == "down"] or None,
            timeout=30,
            what="the dead target to be scraped",
        )
        with pytest.raises(TimeoutError, match="connection refused"):
            prom.wait_until_targets_up(timeout=1)


def test_grafana_variables_are_rendered_and_unknown_ones_rejected() -> None:
    assert render_grafana_variables("rate(x[$__rate_interval])") == "rate(x[1m])"
    assert render_grafana_variables("rate(x[${__interval}])", interval="30s") == "rate(x[30s])"
    with pytest.raises(ValueError, match="unknown"):
        render_grafana_variables("rate(x[$__nonsense])")
    with pytest.raises(ValueError, match="unrendered"):
        render_grafana_variables('x{model="$model"}')


def test_metric_names_are_found_in_expressions() -> None:
    query = DashboardQuery(
        "p",
        "A",
        'histogram_quantile(0.95, sum by (upstream, le) (rate(memgate_upstream_x_bucket{a="b"}'
        "[$__rate_interval]))) or vector(0) / sum(vllm:num_requests_running)",
    )
    assert query.metric_names == {"memgate_upstream_x_bucket", "vllm:num_requests_running"}
    assert query.needs_series(["memgate_"]) and not query.needs_series(["embedder_"])
