"""Definitions and measurements shared by the SLA tests."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.burn_rate import SloMeasurement
from decisions.slo_definitions import SlaDefinitions, parse_definitions

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

DEFINITIONS = """\
settings:
  no_data_after: 10m
escalation_policies:
  - name: default
    repeat_interval: 2h
    email_fallback: [oncall@example.test]
    levels:
      - {name: team lead, channel: "#oncall", after: 15m}
      - {name: engineering manager, channel: "#oncall", mentions: [U0MGR], after: 30m}
      - {name: CTO, channel: "#incidents", mentions: [U0CTO], after: 60m}
slos:
  - name: availability
    sli:
      kind: ratio
      good: sum(rate(http_requests_total{service="api",code!~"5.."}[$window]))
      total: sum(rate(http_requests_total{service="api"}[$window]))
    objective: 0.999
    window: 30d
    runbook: https://runbooks.example.test/availability
alert_rules:
  - name: error-rate
    metric: >-
      sum(rate(http_requests_total{service="api",code=~"5.."}[5m]))
      / sum(rate(http_requests_total{service="api"}[5m]))
    operator: ">"
    threshold: 0.001
    period: 1m
    evaluation_periods: 5
    data_points: 3
    severity: warning
    slo: error-rate
  - name: error-rate-critical
    metric: >-
      sum(rate(http_requests_total{service="api",code=~"5.."}[5m]))
      / sum(rate(http_requests_total{service="api"}[5m]))
    operator: ">"
    threshold: 0.01
    period: 1m
    evaluation_periods: 5
    data_points: 3
    severity: critical
    slo: error-rate
degradation:
  - name: latency-degradation
    query: >-
      histogram_quantile(0.95,
      sum by (le) (rate(http_request_duration_seconds_bucket{service="api"}[$window])))
    data_points: 3
    slo: api-latency
    labels: {kind: degradation}
"""


def definitions(extra: str = "") -> SlaDefinitions:
    return parse_definitions(DEFINITIONS + extra, "test-slos.yaml")


def ratio_measurement(error_ratio: dict[str, float], total: float = 1000.0) -> SloMeasurement:
    """Per window error ratio -> measured total and good rates."""
    return SloMeasurement(
        slo="availability",
        total={w: total for w in error_ratio},
        good={w: total * (1 - r) for w, r in error_ratio.items()},
    )


WINDOWS = ["1h", "5m", "6h", "30m", "3d", "30d"]


def burning(**ratios: float) -> SloMeasurement:
    base = dict.fromkeys(WINDOWS, 0.0001)
    base.update({k.replace("_", ""): v for k, v in ratios.items()})
    return ratio_measurement(base)
