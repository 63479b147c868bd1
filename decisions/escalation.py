"""Escalation: the pure state machine from firing alerts to Slack notices.

Alerts are grouped per escalation policy and `group_by` labels (default: the SLO) into an
*incident*; an incident is one Slack thread and escalates as a whole. Pipeline, as in
Alertmanager's `notify/`: silence -> inhibit (a critical alert mutes warnings of the same SLO)
-> group -> decide. `decide` returns the notices to send, each with an idempotency key
(`<incident>:<kind>:<level>`), and the incident state to record *after* the notice was sent:

- a new incident notifies level 1 at once;
- unacknowledged `after` the current level's delay, it escalates to the next level;
- acknowledging stops escalation and reminders;
- still firing and unacknowledged at the last level: a reminder every `repeat_interval`;
- a new alert in an open incident is notified at its current level (a reply in the thread);
  alerts leaving (or coming back) only update its first message in place;
- no alert left: a resolved notice in the same thread.

No I/O and no clock: `now` is an argument, so replays and tests control time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.burn_rate import Alert
from decisions.slo_definitions import SEVERITY_RANK, SlaDefinitions

NoticeKind = Literal["fire", "join", "escalate", "repeat", "resolved", "update", "ack"]
NOTICE_EVENT = {
    "fire": "breached",
    "join": "breached",
    "escalate": "escalated",
    "resolved": "resolved",
}


class PostedNotice(BaseModel):
    """A notice as it was delivered: where, Slack's ts, and through what."""

    key: str
    channel: str
    ts: str
    sent_at: datetime
    sink: str  # slack, file, email
    note: str = ""


class IncidentState(BaseModel):
    """One group's incident: what is firing, how far it escalated, where its thread is."""

    incident: str  # <group>@<started_at epoch seconds>
    group: str
    policy: str
    started_at: datetime
    alerts: dict[str, Alert] = Field(default_factory=dict)
    notified: list[str] = Field(default_factory=list)  # alert keys ever notified
    level: int = 0  # highest level notified
    level_at: datetime | None = None
    last_notified_at: datetime | None = None
    repeats: int = 0
    root_channel: str | None = None
    root_ts: str | None = None
    channel_roots: dict[str, str] = Field(default_factory=dict)  # channel -> first ts there
    acked_by: str | None = None
    acked_at: datetime | None = None
    resolved_at: datetime | None = None
    notices: dict[str, PostedNotice] = Field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    @property
    def severity(self) -> str:
        ranks = [a.severity for a in self.alerts.values()]
        return max(ranks, key=lambda s: SEVERITY_RANK.get(s, 0)) if ranks else "info"


class Notice(BaseModel):
    """One message to send (or one update), and the state to record once it went out."""

    key: str  # idempotency key
    incident: str
    group: str
    kind: NoticeKind
    level: int
    level_name: str = ""
    channel: str
    mentions: list[str] = Field(default_factory=list)
    thread_ts: str | None = None  # reply in this thread
    update_ts: str | None = None  # kind "update": edit this message instead of posting
    alerts: list[Alert]
    started_at: datetime
    at: datetime
    state_after: IncidentState


class Suppressed(BaseModel):
    alert: str
    why: str  # "silenced until ...", "inhibited by ..."


class Plan(BaseModel):
    notices: list[Notice]
    states: dict[str, IncidentState]  # states to save without a notice (alert set changes)
    suppressed: list[Suppressed]


def group_key(alert: Alert, definitions: SlaDefinitions) -> str:
    policy = definitions.policy(alert.escalation)
    parts = [f"{label}={alert.labels.get(label, '')}" for label in policy.group_by]
    return f"{policy.name}:" + ",".join(parts)


def silence_and_inhibit(
    alerts: list[Alert], definitions: SlaDefinitions, now: datetime
) -> tuple[list[Alert], list[Suppressed]]:
    """Drop silenced alerts, then warnings (and infos) of an SLO that also has a critical."""
    kept: list[Alert] = []
    suppressed: list[Suppressed] = []
    for alert in alerts:
        silence = next((s for s in definitions.silences if s.matches(alert.labels, now)), None)
        if silence is not None:
            why = f"silenced until {silence.ends_at.isoformat()}"
            suppressed.append(Suppressed(alert=alert.key, why=why + f" ({silence.comment})"))
        else:
            kept.append(alert)
    top: dict[str, Alert] = {}
    for alert in kept:
        best = top.get(alert.slo)
        if best is None or SEVERITY_RANK[alert.severity] > SEVERITY_RANK[best.severity]:
            top[alert.slo] = alert
    result = []
    for alert in kept:
        best = top[alert.slo]
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[best.severity]:
            suppressed.append(Suppressed(alert=alert.key, why=f"inhibited by {best.key}"))
        else:
            result.append(alert)
    return result, suppressed


def _digest(keys: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:10]


def decide(
    now: datetime,
    alerts: list[Alert],
    states: dict[str, IncidentState],
    definitions: SlaDefinitions,
) -> Plan:
    """The notices due at `now` for `alerts` (firing, before silences) given each group's
    incident state (`states`: group -> latest incident)."""
    active, suppressed = silence_and_inhibit(alerts, definitions, now)
    grouped: dict[str, list[Alert]] = {}
    for alert in active:
        grouped.setdefault(group_key(alert, definitions), []).append(alert)
    notices: list[Notice] = []
    changed: dict[str, IncidentState] = {}
    for group in sorted(set(grouped) | {g for g, s in states.items() if s.open}):
        firing = sorted(grouped.get(group, []), key=lambda a: a.key)
        state = states.get(group)
        if state is None or not state.open:
            if firing:
                notices.append(_new_incident(group, firing, now, definitions))
            continue
        policy = definitions.policy(state.policy)
        if not firing:
            notices.extend(_resolved(state, now))
            continue
        new = [a for a in firing if a.key not in state.notified]
        if new:  # a new alert in an open incident: notified at the incident's level, in thread
            notice = _join(state, firing, new, now, definitions)
            notices.append(notice)
            state = notice.state_after
        elif set(state.alerts) != {a.key for a in firing} or any(
            state.alerts[a.key].severity != a.severity for a in firing if a.key in state.alerts
        ):
            updated = state.model_copy(update={"alerts": {a.key: a for a in firing}})
            notices.append(_update(updated, now))
            state = updated
        else:
            state = state.model_copy(update={"alerts": {a.key: a for a in firing}})
            changed[group] = state
        if state.acked_at is not None:
            continue
        current = policy.levels[state.level - 1]
        if state.level < len(policy.levels):
            if state.level_at is not None and now - state.level_at >= current.after:
                notices.append(_escalate(state, now, definitions))
        elif state.last_notified_at is not None and (
            now - state.last_notified_at >= policy.repeat_interval
        ):
            notices.append(_repeat(state, now, definitions))
    # Values in `changed` only refresh alert details; a notice's state_after supersedes them.
    for n in notices:
        changed.pop(n.group, None)
    return Plan(notices=notices, states=changed, suppressed=suppressed)


def _incident_id(group: str, now: datetime) -> str:
    return f"{group}@{int(now.timestamp())}"


def _new_incident(
    group: str, firing: list[Alert], now: datetime, definitions: SlaDefinitions
) -> Notice:
    policy = definitions.policy(firing[0].escalation)
    level = policy.levels[0]
    channel = policy.channel(1) or "#perfops"
    incident = _incident_id(group, now)
    after = IncidentState(
        incident=incident,
        group=group,
        policy=policy.name,
        started_at=now,
        alerts={a.key: a for a in firing},
        notified=[a.key for a in firing],
        level=1,
        level_at=now,
        last_notified_at=now,
        root_channel=channel,
    )
    return Notice(
        key=f"{incident}:fire:1",
        incident=incident,
        group=group,
        kind="fire",
        level=1,
        level_name=level.name,
        channel=channel,
        mentions=level.mentions,
        alerts=firing,
        started_at=now,
        at=now,
        state_after=after,
    )


def _at_level(
    state: IncidentState,
    definitions: SlaDefinitions,
    level_no: int,
    now: datetime,
    *,
    kind: NoticeKind,
    key: str,
    alerts: list[Alert],
    after: IncidentState,
    update_ts: str | None = None,
) -> Notice:
    """A notice to escalation level `level_no` of the incident's policy: that level's channel
    (else the incident's first channel) and mentions, in the channel's thread."""
    policy = definitions.policy(state.policy)
    level = policy.levels[level_no - 1]
    channel = policy.channel(level_no) or state.root_channel or "#perfops"
    return Notice(
        key=key,
        incident=state.incident,
        group=state.group,
        kind=kind,
        level=level_no,
        level_name=level.name,
        channel=channel,
        mentions=level.mentions,
        thread_ts=state.channel_roots.get(channel),
        update_ts=update_ts,
        alerts=alerts,
        started_at=state.started_at,
        at=now,
        state_after=after,
    )


def _join(
    state: IncidentState,
    firing: list[Alert],
    new: list[Alert],
    now: datetime,
    definitions: SlaDefinitions,
) -> Notice:
    """New alerts in an open incident: a reply (broadcast) at the current level, with its
    mentions; the first message is re-rendered with every alert."""
    after = state.model_copy(
        update={
            "alerts": {a.key: a for a in firing},
            "notified": state.notified + [a.key for a in new],
        }
    )
    return _at_level(
        state,
        definitions,
        state.level,
        now,
        kind="join",
        key=f"{state.incident}:join:{_digest([a.key for a in new])}",
        alerts=new,
        after=after,
        update_ts=state.root_ts,
    )


def _escalate(state: IncidentState, now: datetime, definitions: SlaDefinitions) -> Notice:
    nxt = state.level + 1
    after = state.model_copy(update={"level": nxt, "level_at": now, "last_notified_at": now})
    return _at_level(
        state,
        definitions,
        nxt,
        now,
        kind="escalate",
        key=f"{state.incident}:escalate:{nxt}",
        alerts=list(state.alerts.values()),
        after=after,
    )


def _repeat(state: IncidentState, now: datetime, definitions: SlaDefinitions) -> Notice:
    n = state.repeats + 1
    after = state.model_copy(update={"repeats": n, "last_notified_at": now})
    return _at_level(
        state,
        definitions,
        state.level,
        now,
        kind="repeat",
        key=f"{state.incident}:repeat:{state.level}.{n}",
        alerts=list(state.alerts.values()),
        after=after,
    )


def _update(state: IncidentState, now: datetime) -> Notice:
    digest = _digest(list(state.alerts) + [a.severity for a in state.alerts.values()])
    return Notice(
        key=f"{state.incident}:update:{digest}",
        incident=state.incident,
        group=state.group,
        kind="update",
        level=state.level,
        channel=state.root_channel or "#perfops",
        update_ts=state.root_ts,
        alerts=list(state.alerts.values()),
        started_at=state.started_at,
        at=now,
        state_after=state,
    )


def _resolved(state: IncidentState, now: datetime) -> list[Notice]:
    """A resolved reply in every channel the incident reached (the root thread first)."""
    after = state.model_copy(update={"resolved_at": now})
    channels = [state.root_channel or "#perfops"] + [
        c for c in state.channel_roots if c != state.root_channel
    ]
    return [
        Notice(
            key=f"{state.incident}:resolved:{i + 1}",
            incident=state.incident,
            group=state.group,
            kind="resolved",
            level=state.level,
            channel=channel,
            thread_ts=state.channel_roots.get(channel),
            update_ts=state.root_ts if i == 0 else None,
            alerts=list(state.alerts.values()),
            started_at=state.started_at,
            at=now,
            state_after=after,
        )
        for i, channel in enumerate(channels)
    ]


def record(state: IncidentState, notice: Notice, posted: PostedNotice) -> IncidentState:
    """The incident after `notice` was delivered as `posted` (ts kept to thread and update)."""
    new = notice.state_after.model_copy(deep=True)
    # Keep what other notices of the same run already recorded.
    new.notices = {**state.notices, **new.notices, notice.key: posted}
    new.channel_roots = {**state.channel_roots, **new.channel_roots}
    top_level = notice.kind in ("fire", "escalate", "repeat") and notice.thread_ts is None
    if top_level and posted.sink != "email":
        new.channel_roots.setdefault(posted.channel, posted.ts)
        if notice.kind == "fire":
            new.root_channel, new.root_ts = posted.channel, posted.ts
    if state.root_ts and not new.root_ts:
        new.root_channel, new.root_ts = state.root_channel, state.root_ts
    return new


def acknowledge(state: IncidentState, by: str, now: datetime) -> IncidentState:
    """Stop escalation and reminders of an open incident (idempotent: the first ack stays)."""
    if not state.open:
        raise ValueError(f"incident {state.incident} is already resolved")
    if state.acked_at is not None:
        return state
    return state.model_copy(update={"acked_by": by, "acked_at": now})


def rebuild(payloads: list[dict[str, Any]]) -> tuple[dict[str, IncidentState], list[PostedNotice]]:
    """Incidents (group -> latest) and the notification log rebuilt from the notices' own
    metadata, as read back from Slack (or the outbox): what survives a Redis without data.
    Each payload is `notice_metadata(...)` plus `_channel`, `_ts` and `_top` (a thread root)."""
    incidents: dict[str, IncidentState] = {}
    log: list[PostedNotice] = []
    for p in sorted(payloads, key=lambda p: (p["at"], p["_ts"])):
        at = datetime.fromisoformat(p["at"])
        log.append(
            PostedNotice(key=p["key"], channel=p["_channel"], ts=p["_ts"], sent_at=at, sink="slack")
        )
        alerts = {a["key"]: Alert.model_validate(a) for a in p.get("alerts", [])}
        state = incidents.get(p["incident"])
        if state is None:
            state = IncidentState(
                incident=p["incident"],
                group=p["group"],
                policy=p.get("policy", "default"),
                started_at=datetime.fromisoformat(p["started_at"]),
                alerts=alerts,
            )
            incidents[p["incident"]] = state
        state.notices[p["key"]] = log[-1]
        kind = p["kind"]
        if p.get("_top") and kind in ("fire", "escalate", "repeat"):
            state.channel_roots.setdefault(p["_channel"], p["_ts"])
            if kind == "fire":
                state.root_channel, state.root_ts = p["_channel"], p["_ts"]
        if kind in ("fire", "escalate") and p["level"] >= state.level:
            state.level, state.level_at = p["level"], at
        if kind in ("fire", "escalate", "repeat"):
            state.last_notified_at = at
            state.repeats = int(p.get("repeats") or 0)
        if kind in ("fire", "escalate", "repeat", "update") and alerts:
            state.alerts = alerts
        if kind in ("fire", "join"):
            state.notified += [k for k in alerts if k not in state.notified]
            if kind == "join":
                state.alerts = {**state.alerts, **alerts}
        if kind == "ack" and state.acked_at is None:
            state.acked_by, state.acked_at = p.get("acked_by"), at
        if kind == "resolved":
            state.resolved_at = at
    latest: dict[str, IncidentState] = {}
    for state in incidents.values():
        if state.group not in latest or state.started_at > latest[state.group].started_at:
            latest[state.group] = state
    return latest, log
