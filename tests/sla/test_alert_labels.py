"""The labels evaluate_slos puts on an alert's events: the scaling trigger in prefect.yaml matches
on `perfops.scaling.group` and runs scale_predictively for that group."""

from __future__ import annotations

from typing import Literal

from decisions.burn_rate import Alert
from decisions.sla_report import alert_labels, alert_resource


def _alert(kind: Literal["slo", "rule", "degradation"], labels: dict[str, str]) -> Alert:
    return Alert(
        key=f"latency-degradation/{kind}",
        name="latency-degradation",
        condition="degraded",
        kind=kind,
        slo="api-latency",
        severity="warning",
        labels=labels,
        value=0.3,
        objective=0.2,
        reason="p95 30% above last week",
    )


def test_a_degradation_rule_with_a_scaling_group_names_it_on_the_event() -> None:
    alert = _alert("degradation", {"kind": "degradation", "scaling_group": "api"})
    assert alert_resource(alert) == "perfops.sla.degradation.latency-degradation"
    assert alert_labels(alert) == {
        "perfops.alert": "latency-degradation/degradation",
        "perfops.kind": "degradation",
        "perfops.scaling.group": "api",
    }


def test_an_alert_without_a_scaling_group_names_none() -> None:
    labels = alert_labels(_alert("slo", {"kind": "availability"}))
    assert "perfops.scaling.group" not in labels
    assert labels["perfops.kind"] == "slo"
