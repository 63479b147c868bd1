"""An SLA evaluation run's report: every SLO and rule with its budget and burn rates, what
happened to each notice, the summary a person reads, the artifact rows, the events the run ends
with and, when notices could not be sent, the one line that says so (the run's state message).
Pure: `flows/evaluate_slos.py` fills it in; `decisions.burn_rate` evaluates,
`decisions.escalation` decides the notices and `tasks.sla_delivery` sends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from decisions.burn_rate import UNREACHABLE, Alert, SloStatus
from decisions.escalation import NOTICE_EVENT, Suppressed

EVENT = "perfops.sla."


class Delivered(BaseModel):
    """One notice of a run: where it went and what happened to it."""

    key: str
    incident: str
    group: str
    kind: str
    level: int
    channel: str  # as the policy names it (#oncall)
    channel_id: str = ""  # Slack's id (C0123...), where it was resolved
    sink: str  # slack, file, email, skipped
    ts: str | None = None
    outcome: str  # sent, already sent, email fallback, deferred, failed
    note: str = ""
    alerts: list[Alert] = Field(default_factory=list)


class DeliveryReport(BaseModel):
    delivered: list[Delivered]
    suppressed: list[Suppressed]
    recovered: str = ""  # what a state rebuild found, when one ran
    incidents_open: int = 0
    deferred: bool = False  # nothing decided: Redis had no state and Slack was unreadable
    warnings: list[str] = Field(default_factory=list)  # an incident's policy changed under it
    lock_lost: str = ""  # the SLA lock expired mid-run: why the rest was not sent or recorded
    stale: str = ""  # nothing decided: a newer evaluation already had (why)
    busy: str = ""  # nothing decided: the SLA lock could not be taken, or Redis read (why)


class SlaRunReport(BaseModel):
    at: datetime
    statuses: list[SloStatus]
    alerts: list[Alert]
    delivery: DeliveryReport | None = None
    queries: int
    seconds: float
    metrics: str
    slack: str
    notes: list[str] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        firing = len(self.alerts)
        sent = [d for d in (self.delivery.delivered if self.delivery else []) if d.ts is not None]
        return (
            f"{len(self.statuses)} SLOs and rules at {self.at:%Y-%m-%d %H:%M} UTC: "
            f"{firing} alerts firing, {sum(s.status == 'no data' for s in self.statuses)} "
            f"without data; {len(sent)} notices"
        )

    @property
    def description(self) -> str:
        """The artifact's description."""
        return (
            f"SLA evaluation at {self.at:%Y-%m-%d %H:%M} UTC from {self.metrics}; notices to "
            f"{self.slack}: {self.summary}. Budget left is over each SLO's whole window."
        )

    @property
    def unsent(self) -> list[Delivered]:
        """The notices that could not be sent."""
        if self.delivery is None:
            return []
        return [d for d in self.delivery.delivered if d.outcome == "failed"]

    @property
    def partial(self) -> bool:
        """Some notices were sent (or already were) and others not."""
        if self.delivery is None or not self.unsent:
            return False
        return len(self.unsent) < len(self.delivery.delivered)

    @property
    def blind(self) -> str | None:
        """Why no SLO or rule could be read, when Prometheus could not be reached for any of
        them: the evaluation did not happen (an empty answer or a rejected query is that item's
        "no data", not a blind run)."""
        if not self.statuses or not all(
            s.status == "no data" and s.detail.startswith(UNREACHABLE) for s in self.statuses
        ):
            return None
        return f"no SLO or rule could be evaluated: {self.statuses[0].detail}"

    @property
    def failure(self) -> str | None:
        """What failed, for the run's state message; None when the SLOs were evaluated and
        every notice went out."""
        delivery, unsent = self.delivery, self.unsent
        if delivery and delivery.deferred:
            return delivery.recovered
        if delivery and delivery.busy:
            return delivery.busy
        if delivery and unsent:
            # A level that could not be reached first: what most needs fixing.
            first = next((d for d in unsent if d.kind in ("fire", "escalate")), unsent[0])
            return (
                f"{len(unsent)} of {len(delivery.delivered)} notices not sent: {first.key}: "
                f"{first.note}"
            )
        if delivery and delivery.lock_lost:
            return delivery.lock_lost
        return self.blind


def alert_resource(alert: Alert) -> str:
    if alert.kind == "degradation":
        return f"perfops.sla.degradation.{alert.name}"
    return f"perfops.sla.slo.{alert.slo}"


def alert_labels(alert: Alert) -> dict[str, str]:
    """The event's resource labels: the alert, its kind, and the Auto Scaling group a
    degradation rule names (`scaling_group` label), which the scaling trigger runs for."""
    labels = {"perfops.alert": alert.key, "perfops.kind": alert.kind}
    if alert.labels.get("scaling_group"):
        labels["perfops.scaling.group"] = alert.labels["scaling_group"]
    return labels


def artifact_rows(report: SlaRunReport) -> list[dict[str, object]]:
    """The artifact table: every SLO and rule, then every notice, then what was muted."""

    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.3%}"

    rows: list[dict[str, object]] = []
    for s in report.statuses:
        rows.append(
            {
                "item": s.name,
                "result": s.status,
                "reason": s.detail,
                "kind": s.kind,
                "objective": s.objective if s.objective is not None else "",
                "window": s.window,
                "sli / value": pct(s.sli) if s.kind == "slo" else (s.value or ""),
                "budget left": pct(s.budget_remaining),
                "burn rates": ", ".join(
                    f"{w} {v:.2f}x" for w, v in s.burn_rates.items() if v is not None
                ),
                "detail": "",
            }
        )
    for d in report.delivery.delivered if report.delivery else []:
        rows.append(
            {
                "item": d.key,
                "result": d.outcome,
                "reason": d.note,
                "kind": f"notice {d.kind}",
                "objective": "",
                "window": "",
                "sli / value": f"level {d.level}",
                "budget left": "",
                "burn rates": "",
                "detail": f"{d.sink} {d.channel}"
                + (f" ({d.channel_id})" if d.channel_id else "")
                + f" ts={d.ts or '-'}",
            }
        )
    for m in report.delivery.suppressed if report.delivery else []:
        rows.append({"item": m.alert, "result": "muted", "reason": m.why, "kind": "suppressed"})
    for result, why in [
        ("skipped", report.delivery.stale if report.delivery else ""),
        ("not decided", report.delivery.busy if report.delivery else ""),
    ]:
        if why:
            rows.append({"item": "notices", "result": result, "reason": why, "kind": "delivery"})
    for w in report.delivery.warnings if report.delivery else []:
        rows.append(
            {"item": "escalation policies", "result": "warning", "reason": w, "kind": "definitions"}
        )
    return rows


def sla_events(
    report: SlaRunReport,
) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
    """The events a run ends with, as (event name, resource, payload, resource labels):
    `perfops.sla.breached` / `.escalated` / `.resolved` per alert of each notice sent now (not
    one already sent), then one `perfops.sla.evaluated`."""
    events: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
    delivery = report.delivery
    for d in delivery.delivered if delivery else []:
        what = NOTICE_EVENT.get(d.kind)
        if what is None or d.outcome == "already sent":
            continue
        for alert in d.alerts:
            payload: dict[str, Any] = {
                "alert": alert.key,
                "slo": alert.slo,
                "severity": alert.severity,
                "level": d.level,
                "value": alert.value,
                "objective": alert.objective,
                "reason": alert.reason,
                "incident": d.incident,
                "sink": d.sink,
                "channel": d.channel,
                "channel_id": d.channel_id,
                "note": d.note,
            }
            events.append((EVENT + what, alert_resource(alert), payload, alert_labels(alert)))
    evaluated: dict[str, Any] = {
        "at": report.at.isoformat(),
        "slos": [
            {
                "name": s.name,
                "kind": s.kind,
                "objective": s.objective,
                "window": s.window,
                "sli": s.sli if s.kind == "slo" else s.value,
                "budget_remaining": s.budget_remaining,
                "burn_rates": s.burn_rates,
                "status": s.status,
            }
            for s in report.statuses
        ],
        "alerts_firing": len(report.alerts),
        "alerts": [a.key for a in report.alerts],
        "notices": len(delivery.delivered) if delivery else 0,
    }
    events.append((EVENT + "evaluated", "perfops.sla", evaluated, {}))
    return events
