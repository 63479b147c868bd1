"""SLO evaluation: error-budget burn rates over multi-window pairs, alert rules with evaluation
periods and data points, the degradation rule, and the no-data rule. Pure: it takes what
Prometheus answered (`*Measurement`) and the evaluation time `now`, and returns statuses and
alerts, so a replay evaluates any minute of history the same way the schedule does.

Non-finite numbers: a NaN (0/0, e.g. no traffic in a window) is a missing point, never a pass;
+Inf/-Inf in a rule's value compare as numbers (histogram_quantile says +Inf when the quantile
lies above the top bucket: that is a breach, not an error); a non-finite count in a ratio SLI is
a missing window. A rejected query or an empty answer makes the item "no data" at once in the
record and raises a `no-data` alert once it has lasted `settings.no_data_after`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from decisions.slo_definitions import (
    AlertRule,
    DegradationRule,
    EvaluationSettings,
    Operator,
    SlaDefinitions,
    Slo,
    promql_duration,
)

Status = Literal["ok", "firing", "no data", "no baseline"]
# how a measurement's error begins when Prometheus could not be reached at all (not a rejected
# query or an empty answer): a run where every item failed so was blind (decisions.sla_report)
UNREACHABLE = "cannot reach Prometheus"


class SloMeasurement(BaseModel):
    """What Prometheus answered for one SLO at `now`: per window (PromQL duration) the rate of
    all events and of good events (ratio SLI), or the quantile (quantile SLI)."""

    slo: str
    total: dict[str, float] = Field(default_factory=dict)
    good: dict[str, float] = Field(default_factory=dict)
    quantile: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class SeriesMeasurement(BaseModel):
    """A rule's (or degradation's) values at consecutive evaluation times, oldest first; NaN
    where Prometheus returned nothing. `baseline` for a degradation rule."""

    name: str
    values: list[float] = Field(default_factory=list)
    baseline: list[float] = Field(default_factory=list)
    error: str | None = None


class Alert(BaseModel):
    """One firing condition. `key` is stable across evaluations: the escalation state's id."""

    key: str
    name: str  # the SLO, rule or degradation rule
    condition: str  # page-fast, page-slow, ticket, threshold, degraded, no-data
    kind: Literal["slo", "rule", "degradation"]
    slo: str
    severity: str
    labels: dict[str, str]
    value: float | None
    objective: float | None
    reason: str
    burn_rate: float | None = None
    budget_remaining: float | None = None
    runbook: str = ""
    dashboard: str = ""
    escalation: str = "default"


class SloStatus(BaseModel):
    """One SLO (or rule) at `now`, for the artifact and `perfops.sla.evaluated`."""

    name: str
    kind: Literal["slo", "rule", "degradation"]
    objective: float | None
    window: str
    sli: float | None = None
    budget_remaining: float | None = None
    burn_rates: dict[str, float | None] = Field(default_factory=dict)
    value: float | None = None
    status: Status = "ok"
    detail: str = ""


class Evaluation(BaseModel):
    at: datetime
    statuses: list[SloStatus]
    alerts: list[Alert]
    no_data_since: dict[str, datetime]  # carry into the next evaluation
    # Keys of the alerts that could not be evaluated at `at` (no data, no traffic in one of an
    # SLO pair's windows): unknown, not ok. An open incident keeps them firing as they were
    # (`decisions.escalation.decide`), never resolves on them.
    unknown: list[str] = Field(default_factory=list)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def slo_windows(slo: Slo) -> list[str]:
    """Every window an SLO needs, as PromQL durations: its burn pairs and its whole window."""
    seen: list[str] = []
    for bw in slo.burn_windows:
        for w in (bw.long, bw.short):
            if promql_duration(w) not in seen:
                seen.append(promql_duration(w))
    if promql_duration(slo.window) not in seen:
        seen.append(promql_duration(slo.window))
    return seen


def error_ratio(m: SloMeasurement, window: str) -> float | None:
    """1 - good/total over `window`; None when missing, non-finite or without traffic."""
    total, good = _finite(m.total.get(window)), _finite(m.good.get(window))
    if total is None or good is None or total <= 0:
        return None
    return min(max(1.0 - good / total, 0.0), 1.0)


def burn_rate(ratio: float | None, slo: Slo) -> float | None:
    """How many times faster than allowed the budget burns (1.0 spends it exactly in the window)."""
    return None if ratio is None else ratio / slo.error_budget


def budget_remaining(ratio: float | None, slo: Slo) -> float | None:
    """Share of the window's error budget left (negative when overspent)."""
    return None if ratio is None else 1.0 - ratio / slo.error_budget


def compare(value: float, operator: Operator, threshold: float) -> bool:
    if math.isnan(value):
        return False
    match operator:
        case ">":
            return value > threshold
        case ">=":
            return value >= threshold
        case "<":
            return value < threshold
        case "<=":
            return value <= threshold


def _labels(base: dict[str, str], **extra: str) -> dict[str, str]:
    return {**base, **extra}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def unknown_alerts(definitions: SlaDefinitions, statuses: list[SloStatus]) -> list[str]:
    """The keys of the alerts `statuses` could not evaluate: every alert of an item without
    data; an SLO's burn pair with a window missing (no samples, no traffic)."""
    by_name = {(s.kind, s.name): s for s in statuses}
    keys: list[str] = []
    for slo in definitions.slos:
        st = by_name.get(("slo", slo.name))
        for bw in slo.burn_windows:
            pair = (promql_duration(bw.long), promql_duration(bw.short))
            if st is None or any(st.burn_rates.get(w) is None for w in pair):
                keys.append(f"{slo.name}/{bw.name}")
    for rule in definitions.alert_rules:
        st = by_name.get(("rule", rule.name))
        if st is None or st.status == "no data":
            keys.append(f"{rule.name}/threshold")
    for deg in definitions.degradation:
        st = by_name.get(("degradation", deg.name))
        if st is None or st.status == "no data":
            keys.append(f"{deg.name}/degraded")
    return keys


def _evaluate_slo(slo: Slo, m: SloMeasurement) -> tuple[SloStatus, list[Alert]]:
    full = promql_duration(slo.window)
    base = _labels(slo.labels, slo=slo.name)
    alerts: list[Alert] = []
    if slo.sli.kind == "quantile":
        threshold = slo.sli.threshold_s
        ratios = {w: _finite(m.quantile.get(w)) for w in slo_windows(slo)}
        burns = {w: (None if v is None else v / threshold) for w, v in ratios.items()}
        sli = ratios.get(full)
        status = SloStatus(
            name=slo.name,
            kind="slo",
            objective=threshold,
            window=full,
            sli=sli,
            burn_rates=burns,
            value=sli,
        )
    else:
        ratios = {w: error_ratio(m, w) for w in slo_windows(slo)}
        burns = {w: burn_rate(r, slo) for w, r in ratios.items()}
        ratio_full = ratios.get(full)
        status = SloStatus(
            name=slo.name,
            kind="slo",
            objective=slo.objective,
            window=full,
            sli=None if ratio_full is None else 1.0 - ratio_full,
            budget_remaining=budget_remaining(ratio_full, slo),
            burn_rates=burns,
            value=None if ratio_full is None else 1.0 - ratio_full,
        )
    if all(b is None for b in burns.values()):
        status.status = "no data"
        status.detail = m.error or "no samples in any window (or no traffic)"
        return status, alerts
    undecided: list[str] = []  # pairs whose long window burns and whose short one is missing
    for bw in slo.burn_windows:
        long_w, short_w = promql_duration(bw.long), promql_duration(bw.short)
        b_long, b_short = burns.get(long_w), burns.get(short_w)
        # A quantile SLO burns when the quantile exceeds the threshold (ratio > 1) in both
        # windows; its factor is ignored (1.0).
        factor = 1.0 if slo.sli.kind == "quantile" else bw.factor
        if b_long is not None and b_long > factor and b_short is None:
            undecided.append(
                f"{bw.name}: {b_long:.1f}x over {long_w} (alert above {factor:g}x), none over "
                f"{short_w} (no samples or no traffic)"
            )
        if b_long is None or b_short is None:
            continue
        if b_long > factor and b_short > factor:
            sli_long = ratios[long_w]
            value = sli_long if slo.sli.kind == "quantile" else 1.0 - (sli_long or 0.0)
            alerts.append(
                Alert(
                    key=f"{slo.name}/{bw.name}",
                    name=slo.name,
                    condition=bw.name,
                    kind="slo",
                    slo=slo.name,
                    severity=bw.severity,
                    labels=_labels(base, alertname=bw.name, severity=bw.severity),
                    value=value,
                    objective=status.objective,
                    reason=(
                        f"error budget burning {b_long:.1f}x over {long_w} and {b_short:.1f}x "
                        f"over {short_w} (alert above {factor:g}x)"
                        if slo.sli.kind == "ratio"
                        else f"quantile {_fmt(ratios[long_w])} s over {long_w} and "
                        f"{_fmt(ratios[short_w])} s over {short_w} above {status.objective} s"
                    ),
                    burn_rate=b_long,
                    budget_remaining=status.budget_remaining,
                    runbook=slo.runbook,
                    dashboard=slo.dashboard,
                    escalation=slo.escalation,
                )
            )
    if alerts:
        status.status = "firing"
        status.detail = "; ".join(a.reason for a in alerts)
    elif undecided:  # burning as far as can be seen, the short window silent: not ok
        status.status = "no data"
        status.detail = "cannot tell whether it still burns: " + "; ".join(undecided)
    return status, alerts


def _firing(
    rule: AlertRule | DegradationRule, status: SloStatus, condition: str, objective: float
) -> tuple[SloStatus, list[Alert]]:
    """Set `status` (of `rule`, an alert rule or a degradation rule) firing, with its alert:
    the status's value, `objective`, the detail as the reason; a degradation's labels carry
    `kind` unless the rule sets it."""
    status.status = "firing"
    slo = rule.slo or rule.name
    labels = _labels(rule.labels, slo=slo, alertname=rule.name, severity=rule.severity)
    if status.kind == "degradation":
        labels.setdefault("kind", "degradation")
    alert = Alert(
        key=f"{rule.name}/{condition}",
        name=rule.name,
        condition=condition,
        kind=status.kind,
        slo=slo,
        severity=rule.severity,
        labels=labels,
        value=status.value,
        objective=objective,
        reason=status.detail,
        runbook=rule.runbook,
        dashboard=rule.dashboard,
        escalation=rule.escalation,
    )
    return status, [alert]


def _evaluate_rule(rule: AlertRule, m: SeriesMeasurement) -> tuple[SloStatus, list[Alert]]:
    values = m.values[-rule.evaluation_periods :]
    window = promql_duration(rule.period * rule.evaluation_periods)
    present = [v for v in values if not math.isnan(v)]
    latest = next((v for v in reversed(values) if not math.isnan(v)), None)
    status = SloStatus(
        name=rule.name, kind="rule", objective=rule.threshold, window=window, value=latest
    )
    if not present:
        status.status = "no data"
        status.detail = m.error or f"no samples in the last {window}"
        return status, []
    breaching = sum(compare(v, rule.operator, rule.threshold) for v in values)
    missing = len(values) - len(present) + max(0, rule.evaluation_periods - len(values))
    status.detail = (
        f"{breaching} of the last {rule.evaluation_periods} {promql_duration(rule.period)} "
        f"periods {rule.operator} {rule.threshold:g} (need {rule.data_points}; latest "
        f"{_fmt(latest)}" + (f"; {missing} missing" if missing else "") + ")"
    )
    if breaching < rule.data_points:
        return status, []
    return _firing(rule, status, "threshold", rule.threshold)


def _evaluate_degradation(
    rule: DegradationRule, m: SeriesMeasurement
) -> tuple[SloStatus, list[Alert]]:
    n = rule.data_points
    current, baseline = m.values[-n:], m.baseline[-n:]
    latest = next((v for v in reversed(current) if math.isfinite(v)), None)
    base_latest = next((v for v in reversed(baseline) if math.isfinite(v)), None)
    status = SloStatus(
        name=rule.name,
        kind="degradation",
        objective=rule.increase,
        window=promql_duration(rule.window),
        value=latest,
    )
    if latest is None:
        status.status = "no data"
        status.detail = m.error or "no current samples"
        return status, []
    if base_latest is None or base_latest <= rule.min_baseline:
        status.status = "no baseline"
        status.detail = (
            f"nothing to compare with {promql_duration(rule.baseline_offset)} earlier"
            + ("" if base_latest is None else f" (baseline {_fmt(base_latest)} <= min_baseline)")
        )
        return status, []
    change = latest / base_latest - 1.0
    status.burn_rates = {"change": change}
    degraded = [
        math.isfinite(b)
        and b > rule.min_baseline
        and not math.isnan(c)
        and c > b * (1.0 + rule.increase)
        for c, b in zip(current, baseline, strict=False)
    ]
    status.detail = (
        f"{_fmt(latest)} now vs {_fmt(base_latest)} {promql_duration(rule.baseline_offset)} "
        f"earlier ({change:+.0%}; alert above +{rule.increase:.0%} for {n} minutes)"
    )
    if len(degraded) < n or not all(degraded):
        return status, []
    return _firing(rule, status, "degraded", base_latest * (1.0 + rule.increase))


def _no_data_alert(
    status: SloStatus, since: datetime, now: datetime, settings: EvaluationSettings, **kw: str
) -> Alert | None:
    if now - since < settings.no_data_after:
        return None
    minutes = int((now - since).total_seconds() // 60)
    return Alert(
        key=f"{status.name}/no-data",
        name=status.name,
        condition="no-data",
        kind=status.kind,
        slo=kw["slo"],
        severity="warning",
        labels={"slo": kw["slo"], "alertname": "no-data", "severity": "warning"},
        value=None,
        objective=status.objective,
        reason=f"no data for {minutes} min: {status.detail}",
        runbook=kw.get("runbook", ""),
        escalation=kw.get("escalation", "default"),
    )


def evaluate(
    definitions: SlaDefinitions,
    slos: dict[str, SloMeasurement],
    rules: dict[str, SeriesMeasurement],
    degradations: dict[str, SeriesMeasurement],
    now: datetime,
    no_data_since: dict[str, datetime] | None = None,
) -> Evaluation:
    """Statuses and alerts at `now`. `no_data_since` is the previous evaluation's map (item ->
    first evaluation without data); an item missing from the measurements counts as no data."""
    previous = dict(no_data_since or {})
    statuses: list[SloStatus] = []
    alerts: list[Alert] = []
    carried: dict[str, datetime] = {}
    items: list[tuple[SloStatus, list[Alert], dict[str, str]]] = []
    for slo in definitions.slos:
        st, al = _evaluate_slo(slo, slos.get(slo.name) or SloMeasurement(slo=slo.name))
        items.append(
            (st, al, {"slo": slo.name, "runbook": slo.runbook, "escalation": slo.escalation})
        )
    for rule in definitions.alert_rules:
        st, al = _evaluate_rule(rule, rules.get(rule.name) or SeriesMeasurement(name=rule.name))
        items.append(
            (
                st,
                al,
                {
                    "slo": rule.slo or rule.name,
                    "runbook": rule.runbook,
                    "escalation": rule.escalation,
                },
            )
        )
    for deg in definitions.degradation:
        measured = degradations.get(deg.name) or SeriesMeasurement(name=deg.name)
        st, al = _evaluate_degradation(deg, measured)
        items.append(
            (
                st,
                al,
                {"slo": deg.slo or deg.name, "runbook": deg.runbook, "escalation": deg.escalation},
            )
        )
    for st, al, meta in items:
        statuses.append(st)
        alerts.extend(al)
        if st.status == "no data":
            since = previous.get(st.name, now)
            carried[st.name] = since
            nd = _no_data_alert(st, since, now, definitions.settings, **meta)
            if nd is not None:
                alerts.append(nd)
    return Evaluation(
        at=now,
        statuses=statuses,
        alerts=alerts,
        no_data_since=carried,
        unknown=unknown_alerts(definitions, statuses),
    )


def page_delay(burn_started: datetime, paged: datetime) -> timedelta:
    """How long after the burn crossed its threshold the page went out (benchmark helper)."""
    return paged - burn_started
