"""A query answering several series on a real Prometheus: a rule, a degradation and a quantile
SLI compare one value with a threshold, so several series are the item's error, naming them;
a ratio SLI's rates are summed over their series."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from blocks import PrometheusSource
from decisions.burn_rate import evaluate
from decisions.slo_definitions import parse_definitions
from demo.sla_series import Incident, api_series
from tasks.prometheus.slis import fetch_measurements
from tests.servers import MetricSeries, PrometheusServer

END = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
AT = END - timedelta(minutes=2)
# api has an outage (50% errors) for the last 30 minutes; web is healthy; batch is idle (its
# counters do not move: its error ratio is 0/0, NaN).
OUTAGE = Incident("outage", END - timedelta(minutes=30), END, error_ratio=0.5)
BUCKETS = [0.1, 0.2, 0.3, 0.5, 1]


def _idle(start: datetime, service: str) -> list[MetricSeries]:
    samples = [(float(t), 100.0) for t in range(int(start.timestamp()), int(END.timestamp()), 60)]
    return [
        MetricSeries("http_requests_total", "gauge", {"service": service, "code": code}, samples)
        for code in ("200", "500")
    ]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusSource]:
    start = END - timedelta(hours=2)
    series = api_series(start, END, [OUTAGE], service="api", buckets=BUCKETS)
    series += api_series(start, END, [], service="web", buckets=BUCKETS)
    series += _idle(start, "batch")
    with PrometheusServer(tmp_path_factory.mktemp("several-series"), series) as server:
        yield PrometheusSource(url=server.url)


ERRORS_BY_SERVICE = (
    'sum by (service) (rate(http_requests_total{code=~"5.."}[5m]))'
    " / sum by (service) (rate(http_requests_total[5m]))"
)
P95_BY_SERVICE = (
    "histogram_quantile(0.95, sum by (le, service) "
    '(rate(http_request_duration_seconds_bucket{service=~"api|web"}[$window])))'
)


def _definitions(errors: str, p95: str) -> str:
    return f"""
escalation_policies:
  - name: default
    levels: [{{name: lead, channel: "#oncall", after: 15m}}]
slos:
  - name: availability
    sli:
      kind: ratio
      good: sum by (service) (rate(http_requests_total{{code!~"5.."}}[$window]))
      total: sum by (service) (rate(http_requests_total[$window]))
    objective: 0.999
    window: 1h
    burn_windows:
      - {{name: page-fast, long: 1h, short: 5m, factor: 14.4, severity: critical}}
  - name: latency
    sli: {{kind: quantile, query: '{p95}', threshold_s: 0.25}}
    objective: 0.99
    window: 1h
    burn_windows:
      - {{name: page-fast, long: 1h, short: 5m, factor: 1, severity: critical}}
alert_rules:
  - name: errors
    metric: '{errors}'
    operator: ">"
    threshold: 0.01
    period: 1m
    evaluation_periods: 5
    data_points: 3
    severity: critical
  - name: p95
    metric: '{p95.replace("$window", "5m")}'
    operator: ">"
    threshold: 0.25
    period: 1m
    evaluation_periods: 5
    data_points: 3
    severity: warning
degradation:
  - name: p95-degradation
    query: '{p95}'
    data_points: 3
"""


def test_several_series_are_the_items_error_naming_them(services: PrometheusSource) -> None:
    d = parse_definitions(_definitions(ERRORS_BY_SERVICE, P95_BY_SERVICE), "several.yaml")
    m = fetch_measurements(services, d, AT)
    ev = evaluate(d, m.slos, m.rules, m.degradations, AT)
    status = {s.name: s for s in ev.statuses}
    # Summed, the idle service's NaN hid api's outage (no data) and two healthy p95s of about
    # 0.19 s added up to a breach of 0.25 s; the quantile SLO and degradation the same.
    for name, answered in [("errors", 3), ("p95", 2), ("latency", 2), ("p95-degradation", 2)]:
        assert status[name].status == "no data", name
        assert f'answered {answered} series ({{service="api"}}' in status[name].detail, name
        assert "it must answer one: aggregate it, e.g. max(...)" in status[name].detail
    assert 'series ({service="api"}, {service="batch"}, {service="web"})' in (
        status["errors"].detail
    )
    # Rates add up: a ratio SLI over several series is evaluated (api's outage burns it).
    assert status["availability"].status == "firing"
    assert [a.key for a in ev.alerts] == ["availability/page-fast"]


def test_aggregated_to_the_worst_series_the_outage_fires_and_healthy_latency_does_not(
    services: PrometheusSource,
) -> None:
    d = parse_definitions(
        _definitions(f"max({ERRORS_BY_SERVICE})", f"max({P95_BY_SERVICE})"), "max.yaml"
    )
    m = fetch_measurements(services, d, AT)
    ev = evaluate(d, m.slos, m.rules, m.degradations, AT)
    status = {s.name: s for s in ev.statuses}
    assert status["errors"].status == "firing" and status["errors"].value == pytest.approx(0.5)
    assert status["p95"].status == "ok" and (status["p95"].value or 1) < 0.25
    assert status["latency"].status == "ok"
    assert status["p95-degradation"].status == "no baseline"  # two hours of data, none last week
