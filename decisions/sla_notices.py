"""Block Kit for SLA notices: what broke, how bad (value vs objective, burn rate, budget left),
since when, the escalation level, links (Prefect run, runbook, dashboard). Pure."""

from __future__ import annotations

from typing import Any

from decisions.burn_rate import Alert
from decisions.escalation import Notice, Unreached
from decisions.slack_metadata import alert_metadata, drop_nulls
from perfops.wording import figure

ICONS = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":white_circle:"}
TITLES = {
    "fire": "FIRING",
    "join": "NEW ALERT",
    "escalate": "ESCALATED",
    "repeat": "STILL FIRING",
    "update": "FIRING",
    "resolved": "RESOLVED",
    "ack": "ACKNOWLEDGED",
}


def slack_escape(text: str) -> str:
    """`text` as Slack's mrkdwn reads it literally: `&`, `<` and `>` are its control characters
    (`<url|label>`, `<@U123>`), so a reason such as "p95 < 0.3 s & errors > 1 %" lost the text
    between them; Slack asks for exactly these three to be escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(value: float | None, alert: Alert) -> str:
    if value is None:
        return "n/a"
    if alert.kind == "slo" and alert.objective is not None and alert.objective < 1:
        return f"{value:.3%}"
    return figure(value)


def _severity(alerts: list[Alert]) -> str:
    order = ["critical", "warning", "info"]
    return next((s for s in order if any(a.severity == s for a in alerts)), "info")


def notice_text(
    notice: Notice, resolved_after_min: int | None = None, *, slack: bool = True
) -> str:
    """The plain-text fallback (what the push notification shows); `slack=False`: for an email
    (nothing escaped)."""
    severity = _severity(notice.alerts)
    names = ", ".join(sorted({a.name for a in notice.alerts})) or notice.group
    names = slack_escape(names) if slack else names
    mentions = " ".join(f"<@{m}>" for m in notice.mentions)
    head = f"{TITLES[notice.kind]} [{severity}] {names}"
    if notice.kind == "resolved":
        return f"{head}: resolved after {resolved_after_min} min"
    missed = ", ".join(
        f"level {u.level} ({slack_escape(u.level_name) if slack else u.level_name})"
        for u in notice.unreached
    )
    return (
        f"{head}: level {notice.level} ({notice.level_name})"
        + (f" {mentions}" if mentions else "")
        + (f" - {missed} could not be reached" if missed else "")
    )


def unreached_lines(notice: Notice, *, slack: bool = True) -> list[str]:
    """One line per lower level of the incident that could not be reached, and why."""
    esc = slack_escape if slack else (lambda text: text)
    return [
        f"Level {u.level} ({esc(u.level_name)}, {esc(u.channel)}) could not be reached since "
        f"{u.since:%Y-%m-%d %H:%M} UTC: {esc(u.why)}"
        for u in notice.unreached
    ]


def notice_blocks(notice: Notice, run_url: str = "") -> list[dict[str, Any]]:
    """Block Kit: a header, one section per alert with its numbers, then since/level/links."""
    severity = _severity(notice.alerts)
    icon = ":white_check_mark:" if notice.kind == "resolved" else ICONS[severity]
    minutes = int((notice.at - notice.started_at).total_seconds() // 60)
    title = f"{TITLES[notice.kind]}: {', '.join(sorted({a.name for a in notice.alerts}))}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{title}"[:150]}},
    ]
    for alert in notice.alerts[:10]:
        fields = [
            f"*What broke*\n{icon} `{slack_escape(alert.key)}` ({alert.severity})",
            f"*Value vs objective*\n{_num(alert.value, alert)} vs {_num(alert.objective, alert)}",
        ]
        if alert.burn_rate is not None:
            fields.append(f"*Burn rate*\n{alert.burn_rate:.1f}x")
        if alert.budget_remaining is not None:
            fields.append(f"*Error budget left*\n{alert.budget_remaining:.1%}")
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": slack_escape(alert.reason)[:2900]},
                "fields": [{"type": "mrkdwn", "text": f} for f in fields],
            }
        )
    if len(notice.alerts) > 10:
        more = f"... and {len(notice.alerts) - 10} more alerts in this group"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": more}})
    since = notice.started_at.strftime("%Y-%m-%d %H:%M UTC")
    status = (
        f"Resolved after {minutes} min (since {since})"
        if notice.kind == "resolved"
        else f"Since {since} ({minutes} min) - level {notice.level}: {notice.level_name}"
    )
    if notice.mentions and notice.kind != "resolved":
        status += " " + " ".join(f"<@{m}>" for m in notice.mentions)
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": status}})
    missed = unreached_lines(notice)
    if missed and notice.kind != "resolved":
        text = "\n".join(f":warning: {line}" for line in missed)[:2900]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    links = []
    if run_url:
        links.append(f"<{run_url}|Prefect run>")
    first = notice.alerts[0] if notice.alerts else None
    if first is not None and first.runbook:
        links.append(f"<{first.runbook}|Runbook>")
    if first is not None and first.dashboard:
        links.append(f"<{first.dashboard}|Dashboard>")
    ack = (
        f"Acknowledge: `perfops sla ack {first.key}`" if first and notice.kind != "resolved" else ""
    )
    context = " | ".join(links + ([ack] if ack else [])) or "perfops"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return blocks


def notice_metadata(notice: Notice) -> dict[str, Any]:
    """The message metadata payload: enough to rebuild the incident from Slack alone. In the
    shape Slack documents (`decisions.slack_metadata`): scalars and an array of flat alert
    objects (labels a JSON string), None values left out (an absent key reads as None)."""
    return drop_nulls(
        {
            "key": notice.key,
            "incident": notice.incident,
            "group": notice.group,
            "policy": notice.state_after.policy,
            "kind": notice.kind,
            "level": notice.level,
            "at": notice.at.isoformat(),
            "started_at": notice.started_at.isoformat(),
            "repeats": notice.state_after.repeats,
            "alerts": [alert_metadata(a) for a in notice.alerts],
            "acked_by": notice.state_after.acked_by,
            "due_at": notice.due_at.isoformat() if notice.due_at else None,
        }
    ) | (
        {"unreached": [_unreached_metadata(u) for u in notice.state_after.unreached]}
        if notice.state_after.unreached
        else {}
    )


def _unreached_metadata(missed: Unreached) -> dict[str, Any]:
    """A level not reached as a flat object of strings and numbers (its reason shortened)."""
    fields = missed.model_dump(mode="json")
    fields["why"] = fields["why"][:500]
    return drop_nulls(fields)
