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
- no alert left: a resolved notice in the same thread;
- a level whose notice could not be delivered (`Unreached`: Slack refused it, no email fallback
  or it failed too) does not hold the escalation back: the incident is recorded at that level
  all the same (`record_unreached`), the next level falls due at its delay from then, its
  notice says which level could not be reached and why, and the undelivered notice is tried
  again (the same key) each run while the incident is open and unacknowledged;
- the definitions edited under an open incident: it continues at its policy's last level, or
  in the group its alerts moved to when its policy is gone (`carry_over`, `fit_policy`);
- one incident, its own threads: a new incident in a group never continues the previous
  (resolved) incident's threads, roots or notices (`continuing`, `record`).

Channels: the policies name channels (`#oncall`); Slack threads and updates need the channel
*id*. `decide` takes the ids the run resolved (`channel_ids`, name -> id) and puts ids in every
notice, so thread roots are keyed by id, as Slack answers a post and as the rebuild reads them.

No I/O and no clock: `now` is an argument, so replays and tests control time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from decisions.burn_rate import Alert
from decisions.slack_metadata import alert_from_metadata
from decisions.slo_definitions import SEVERITY_RANK, EscalationPolicy, SlaDefinitions

NoticeKind = Literal["fire", "join", "escalate", "repeat", "resolved", "update", "ack"]
NOTICE_EVENT = {
    "fire": "breached",
    "join": "breached",
    "escalate": "escalated",
    "resolved": "resolved",
}
DEFAULT_CHANNEL = "#perfops"  # where a policy whose levels name no channel posts


class PostedNotice(BaseModel):
    """A notice as it was delivered: where, Slack's ts, and through what."""

    key: str
    channel: str
    ts: str
    sent_at: datetime
    sink: str  # slack, file, email
    note: str = ""


ESCALATING: tuple[NoticeKind, ...] = ("fire", "escalate")  # notices that move the level on


class Unreached(BaseModel):
    """A level whose notice (`fire` or `escalate`) could not be delivered: the incident went on
    to that level all the same, and the notice (the same key) is tried again each run."""

    key: str
    kind: NoticeKind
    level: int
    level_name: str = ""
    channel: str  # as the policy names it
    why: str
    since: datetime  # when the level fell due (its first attempt)


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
    unreached: list[Unreached] = Field(default_factory=list)  # levels not delivered, by level

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
    # Lower levels of the incident that could not be reached (said in this notice's text).
    unreached: list[Unreached] = Field(default_factory=list)
    due_at: datetime | None = None  # a notice tried again: when its level fell due


class Suppressed(BaseModel):
    alert: str
    why: str  # "silenced until ...", "inhibited by ..."


class Plan(BaseModel):
    notices: list[Notice]
    states: dict[str, IncidentState]  # states to save without a notice (alert set changes)
    suppressed: list[Suppressed]
    # Open incidents whose policy is gone, moved to the group their alerts are in now
    # (old group -> the incident under its new group): saved there, the old group forgotten.
    moved: dict[str, IncidentState] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)  # the definitions changed under an incident


def policy_channels(definitions: SlaDefinitions) -> list[str]:
    """Every channel the escalation policies name, in order (and the default channel when a
    policy names none): what a run resolves to Slack ids before deciding."""
    seen: list[str] = []
    for policy in definitions.escalation_policies:
        named = [lvl.channel for lvl in policy.levels if lvl.channel]
        for channel in named or [DEFAULT_CHANNEL]:
            if channel not in seen:
                seen.append(channel)
    return seen


def level_channel(
    policy: EscalationPolicy, level_no: int, channel_ids: Mapping[str, str] | None = None
) -> str:
    """The channel of escalation level `level_no` (its id when resolved, else as configured)."""
    name = policy.channel(level_no) or DEFAULT_CHANNEL
    return (channel_ids or {}).get(name, name)


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
    channel_ids: Mapping[str, str] | None = None,
    unknown: Collection[str] = (),
) -> Plan:
    """The notices due at `now` for `alerts` (firing, before silences) given each group's
    incident state (`states`: group -> latest incident); channels as ids where `channel_ids`
    (configured name -> id) has them. `unknown`: keys of alerts that could not be evaluated
    at `now` (no data): one an open incident holds keeps firing as it was (`held`), so the
    incident never resolves on a Prometheus it cannot read."""
    ids = channel_ids or {}
    kept, warnings = held(now, alerts, states, unknown)
    active, suppressed = silence_and_inhibit(alerts + kept, definitions, now)
    muted = {s.alert: f"{s.alert} {s.why}" for s in suppressed}
    grouped: dict[str, list[Alert]] = {}
    for alert in active:
        grouped.setdefault(group_key(alert, definitions), []).append(alert)
    states, moved, moves = carry_over(states, grouped, definitions)
    warnings += moves
    notices: list[Notice] = []
    changed: dict[str, IncidentState] = {}
    for group in sorted(set(grouped) | {g for g, s in states.items() if s.open}):
        firing = sorted(grouped.get(group, []), key=lambda a: a.key)
        state = states.get(group)
        if state is None or not state.open:
            if firing:
                notices.append(_new_incident(group, firing, now, definitions, ids))
            continue
        mine = sorted(k for k in state.alerts if k in muted)
        if not firing and mine:  # still firing, silenced or inhibited: nothing said, not resolved
            warnings.append(
                f"incident {state.incident}: muted ({'; '.join(muted[k] for k in mine)}): no "
                "notice, not resolved"
            )
            continue
        if not firing:
            resolved = _resolved(state, now)
            if not resolved:  # no level was ever reached: nobody to tell
                changed[group] = state.model_copy(update={"resolved_at": now})
                warnings.append(
                    f"incident {state.incident} resolved without a notice: no level of it was "
                    f"reached ({'; '.join(f'{u.key}: {u.why}' for u in state.unreached)})"
                )
            notices.extend(resolved)
            continue
        state, policy, warning = fit_policy(state, definitions, firing[0].escalation)
        if warning:
            warnings.append(warning)
            changed[group] = state
        new = [a for a in firing if a.key not in state.notified]
        if new:  # a new alert in an open incident: notified at the incident's level, in thread
            notice = _join(state, firing, new, now, definitions, ids)
            notices.append(notice)
            state = notice.state_after
        elif state.root_ts is not None and (
            set(state.alerts) != {a.key for a in firing}
            or any(
                state.alerts[a.key].severity != a.severity for a in firing if a.key in state.alerts
            )
        ):  # the first message re-rendered (none in Slack: the state alone)
            updated = state.model_copy(update={"alerts": {a.key: a for a in firing}})
            notices.append(_update(updated, now, policy))
            state = updated
        else:
            state = state.model_copy(update={"alerts": {a.key: a for a in firing}})
            changed[group] = state
        if state.acked_at is not None:
            continue
        for missed in state.unreached:  # levels not reached yet: tried again, the same key
            if missed.level <= len(policy.levels):
                notices.append(_retry(state, missed, now, definitions, ids))
        current = policy.levels[state.level - 1]
        if state.level < len(policy.levels):
            if state.level_at is not None and now - state.level_at >= current.after:
                notices.append(_escalate(state, now, definitions, ids))
        elif (
            state.last_notified_at is not None
            and now - state.last_notified_at >= policy.repeat_interval
            and not any(u.level == state.level for u in state.unreached)
        ):  # a reminder to a level not reached yet would only say what its try says
            notices.append(_repeat(state, now, definitions, ids))
    # Values in `changed` only refresh alert details; a notice's state_after supersedes them.
    for n in notices:
        changed.pop(n.group, None)
    return Plan(
        notices=notices, states=changed, suppressed=suppressed, moved=moved, warnings=warnings
    )


def held(
    now: datetime,
    alerts: list[Alert],
    states: Mapping[str, IncidentState],
    unknown: Collection[str],
) -> tuple[list[Alert], list[str]]:
    """The alerts of open incidents that could not be evaluated at `now` (`unknown`) and are
    not firing: kept firing as last seen (no data is not ok), and why, per incident."""
    firing = {a.key for a in alerts}
    unknown = set(unknown)
    kept: list[Alert] = []
    warnings: list[str] = []
    for state in sorted(states.values(), key=lambda s: s.incident):
        if not state.open:
            continue
        mine = [a for k, a in sorted(state.alerts.items()) if k in unknown and k not in firing]
        if mine:
            kept += mine
            firing |= {a.key for a in mine}
            warnings.append(
                f"incident {state.incident}: {', '.join(a.key for a in mine)} could not be "
                f"evaluated at {now:%Y-%m-%d %H:%M} UTC (no data): kept firing, not resolved"
            )
    return kept, warnings


def carry_over(
    states: dict[str, IncidentState],
    grouped: Mapping[str, list[Alert]],
    definitions: SlaDefinitions,
) -> tuple[dict[str, IncidentState], dict[str, IncidentState], list[str]]:
    """Open incidents whose alerts the edited definitions group otherwise: the policy renamed
    or removed, an SLO given another policy, the policy's `group_by` changed. A group is keyed
    by its policy and `group_by` labels, so the incident's alerts now fire in another group:
    the incident moves there, under that group's policy, keeping its thread, level and
    acknowledgement (never resolved, then fired again as new); unless that group has an open
    incident of its own, or none of its alerts fires any more, when it stays and resolves.
    Returns the states by group after the moves, the moved (old group -> incident), and why."""
    out = dict(states)
    moved: dict[str, IncidentState] = {}
    warnings: list[str] = []
    for group, state in sorted(states.items()):
        policy_gone = definitions.find_policy(state.policy) is None
        if not state.open or (not policy_gone and grouped.get(group)):
            continue
        mine = set(state.alerts) | set(state.notified)
        target = next(
            (
                g
                for g, firing in sorted(grouped.items())
                if g != group
                and any(a.key in mine for a in firing)
                and not (g in out and out[g].open)
            ),
            None,
        )
        gone = (
            f"incident {state.incident}: escalation policy {state.policy!r} is no longer defined"
            if policy_gone
            else f"incident {state.incident}: its alerts are grouped otherwise now (the "
            "definitions changed: group_by, or its SLO given another policy)"
        )
        if target is None:
            if policy_gone:
                warnings.append(
                    f"{gone}; it resolves where it is (none of its alerts fires elsewhere)"
                )
            continue
        policy = definitions.policy(grouped[target][0].escalation)
        migrated = state.model_copy(update={"group": target, "policy": policy.name})
        del out[group]
        out[target] = moved[group] = migrated
        warnings.append(f"{gone}; it continues as group {target} under policy {policy.name!r}")
    return out, moved, warnings


def fit_policy(
    state: IncidentState, definitions: SlaDefinitions, fallback: str
) -> tuple[IncidentState, EscalationPolicy, str]:
    """The open incident `state` under its policy as now defined, and why it had to change
    (else ""): the policy gone, `fallback` (its alerts' policy) instead, else `default`, else
    the first; the incident past the policy's last level (levels were removed) continues at
    the last one."""
    policy = definitions.find_policy(state.policy)
    why: list[str] = []
    if policy is None:
        policy = (
            definitions.find_policy(fallback)
            or definitions.find_policy("default")
            or definitions.escalation_policies[0]
        )
        why.append(f"policy {state.policy!r} is no longer defined: {policy.name!r} instead")
        state = state.model_copy(update={"policy": policy.name})
    last = len(policy.levels)
    if state.level > last:
        why.append(
            f"reached level {state.level}, policy {policy.name!r} now has {last}: it continues "
            f"at level {last} ({policy.levels[-1].name})"
        )
        state = state.model_copy(update={"level": last})
    return state, policy, f"incident {state.incident}: " + "; ".join(why) if why else ""


def _incident_id(group: str, now: datetime) -> str:
    return f"{group}@{int(now.timestamp())}"


def _new_incident(
    group: str,
    firing: list[Alert],
    now: datetime,
    definitions: SlaDefinitions,
    ids: Mapping[str, str],
) -> Notice:
    """A new incident: its own state, no thread yet (never the previous incident's)."""
    policy = definitions.policy(firing[0].escalation)
    level = policy.levels[0]
    channel = level_channel(policy, 1, ids)
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
    ids: Mapping[str, str],
    *,
    kind: NoticeKind,
    key: str,
    alerts: list[Alert],
    after: IncidentState,
    update_ts: str | None = None,
    due_at: datetime | None = None,
) -> Notice:
    """A notice to escalation level `level_no` of the incident's policy: that level's channel
    (else the incident's first channel) and mentions, in the channel's thread; saying which
    lower levels could not be reached."""
    policy = definitions.policy(state.policy)
    level = policy.levels[level_no - 1]
    channel = level_channel(policy, level_no, ids)
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
        unreached=[u for u in state.unreached if u.level < level_no],
        due_at=due_at,
    )


def _retry(
    state: IncidentState,
    missed: Unreached,
    now: datetime,
    definitions: SlaDefinitions,
    ids: Mapping[str, str],
) -> Notice:
    """The notice of a level that could not be reached, tried again under its own key: the
    incident's level and escalation clock stay where they are (they went on without it); the
    current level's reminders count from this notice."""
    current = missed.level == state.level
    after = state.model_copy(update={"last_notified_at": now}) if current else state
    return _at_level(
        state,
        definitions,
        missed.level,
        now,
        ids,
        kind=missed.kind,
        key=missed.key,
        alerts=list(state.alerts.values()),
        after=after,
        due_at=missed.since,
    )


def _join(
    state: IncidentState,
    firing: list[Alert],
    new: list[Alert],
    now: datetime,
    definitions: SlaDefinitions,
    ids: Mapping[str, str],
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
        ids,
        kind="join",
        key=f"{state.incident}:join:{_digest([a.key for a in new])}",
        alerts=new,
        after=after,
        update_ts=state.root_ts,
    )


def _escalate(
    state: IncidentState, now: datetime, definitions: SlaDefinitions, ids: Mapping[str, str]
) -> Notice:
    nxt = state.level + 1
    after = state.model_copy(update={"level": nxt, "level_at": now, "last_notified_at": now})
    return _at_level(
        state,
        definitions,
        nxt,
        now,
        ids,
        kind="escalate",
        key=f"{state.incident}:escalate:{nxt}",
        alerts=list(state.alerts.values()),
        after=after,
    )


def _repeat(
    state: IncidentState, now: datetime, definitions: SlaDefinitions, ids: Mapping[str, str]
) -> Notice:
    n = state.repeats + 1
    after = state.model_copy(update={"repeats": n, "last_notified_at": now})
    return _at_level(
        state,
        definitions,
        state.level,
        now,
        ids,
        kind="repeat",
        key=f"{state.incident}:repeat:{state.level}.{n}",
        alerts=list(state.alerts.values()),
        after=after,
    )


def _update(state: IncidentState, now: datetime, policy: EscalationPolicy) -> Notice:
    """The first message re-rendered with the alerts firing now. Keyed by the evaluation time
    and the alert set: each change is its own update (an alert set coming back to an earlier
    one is edited in again), and a retry of the same run finds it logged."""
    level = policy.levels[min(max(state.level, 1), len(policy.levels)) - 1]
    digest = _digest(list(state.alerts) + [a.severity for a in state.alerts.values()])
    return Notice(
        key=f"{state.incident}:update:{int(now.timestamp())}.{digest}",
        incident=state.incident,
        group=state.group,
        kind="update",
        level=state.level,
        level_name=level.name,
        channel=state.root_channel or DEFAULT_CHANNEL,
        update_ts=state.root_ts,
        alerts=list(state.alerts.values()),
        started_at=state.started_at,
        at=now,
        state_after=state,
    )


def _in_every_thread(
    state: IncidentState,
    kind: NoticeKind,
    key: Callable[[int], str],
    at: datetime,
    after: IncidentState,
    *,
    update_first: bool = False,
) -> list[Notice]:
    """A reply of `kind` in every channel the incident reached (in its thread there), its first
    channel first; `key(i)` the i-th reply's idempotency key; `update_first`: the first message
    is re-rendered too."""
    return [
        Notice(
            key=key(i),
            incident=state.incident,
            group=state.group,
            kind=kind,
            level=state.level,
            channel=channel,
            thread_ts=state.channel_roots.get(channel),
            update_ts=state.root_ts if update_first and i == 0 else None,
            alerts=list(state.alerts.values()),
            started_at=state.started_at,
            at=at,
            state_after=after,
        )
        for i, channel in enumerate(reached_channels(state))
    ]


def notice_kind(key: str) -> str:
    """The kind of the notice with idempotency key `key` (`<incident>:<kind>:<n>`)."""
    parts = key.rsplit(":", 2)
    return parts[1] if len(parts) == 3 else ""


def reached_channels(state: IncidentState) -> list[str]:
    """The channels a reply to the whole incident (resolved, acknowledged) goes to, its first
    channel first: every channel it has a thread in, and its first channel unless its first
    message could not be delivered there. None when no level was ever reached (nobody to
    tell); the first channel when the incident went out by email only."""
    first = state.root_channel
    root_missed = any(u.kind == "fire" for u in state.unreached)
    channels = [first] if first and not root_missed else []
    channels += [c for c in state.channel_roots if c != first]
    told = any(notice_kind(k) in ("fire", "join", "escalate", "repeat") for k in state.notices)
    if not channels and (told or not root_missed):
        channels = [first or DEFAULT_CHANNEL]
    return channels


def _resolved(state: IncidentState, now: datetime) -> list[Notice]:
    """A resolved reply in every thread of the incident; the first message updated."""
    after = state.model_copy(update={"resolved_at": now})
    return _in_every_thread(
        state,
        "resolved",
        lambda i: f"{state.incident}:resolved:{i + 1}",
        now,
        after,
        update_first=True,
    )


def acknowledgement(state: IncidentState, by: str, now: datetime) -> list[Notice]:
    """Acknowledging an open incident: escalation and reminders stop (`acknowledge`), and a
    reply says so in every thread of the incident (the root thread first). The same keys for
    a second acknowledgement, so a reply that failed is posted when it is run again."""
    after = acknowledge(state, by, now)
    return _in_every_thread(
        state,
        "ack",
        lambda i: f"{state.incident}:ack:{state.level}" + (f".{i + 1}" if i else ""),
        after.acked_at or now,
        after,
    )


def continuing(state: IncidentState | None, notice: Notice) -> IncidentState:
    """The incident state a delivered notice continues: the group's recorded state when it is
    the notice's incident; a notice of a new incident starts from its own state, so a new
    incident never inherits a resolved one's threads."""
    if state is not None and state.incident == notice.incident:
        return state
    return notice.state_after


def _carried(prior: IncidentState, notice: Notice, missed: list[Unreached]) -> IncidentState:
    """`notice.state_after` with what the run already recorded of the incident (`prior`: its
    other notices, threads and levels not reached) and `missed`; a level not reached that a
    notice has since reached is dropped."""
    new = notice.state_after.model_copy(deep=True)
    new.notices = {**prior.notices, **new.notices}
    new.channel_roots = {**prior.channel_roots, **new.channel_roots}
    by_key = {u.key: u for u in new.unreached}
    by_key.update({u.key: u for u in prior.unreached})  # the recorded one is the newer
    by_key.update({u.key: u for u in missed})
    new.unreached = sorted(
        (u for u in by_key.values() if u.key not in new.notices), key=lambda u: u.level
    )
    if prior.root_ts and not new.root_ts:
        new.root_channel, new.root_ts = prior.root_channel, prior.root_ts
    return new


def record(state: IncidentState | None, notice: Notice, posted: PostedNotice) -> IncidentState:
    """The incident after `notice` was delivered as `posted` (ts kept to thread and update).
    `state` is the group's recorded state; only the notice's own incident is carried over."""
    prior = continuing(state, notice)
    new = _carried(prior, notice, [])
    new.notices[notice.key] = posted
    new.unreached = [u for u in new.unreached if u.key != notice.key]
    top_level = notice.kind in ("fire", "escalate", "repeat") and notice.thread_ts is None
    if top_level and posted.sink != "email":
        new.channel_roots.setdefault(posted.channel, posted.ts)
        if notice.kind == "fire":
            new.root_channel, new.root_ts = posted.channel, posted.ts
    return new


def record_unreached(
    state: IncidentState | None, notice: Notice, why: str, channel: str
) -> IncidentState:
    """The incident after `notice` (to `channel`, as the policy names it) could not be
    delivered (`why`): a `fire` or `escalate` moves the incident to its level all the same, so
    the escalation clock runs from when the level fell due, not from a delivery; the notice
    is kept as `Unreached` (since its first attempt) and tried again. Other kinds leave the
    incident as it was (they are decided again)."""
    prior = continuing(state, notice)
    if notice.kind not in ESCALATING:
        return prior
    earlier = next((u for u in prior.unreached if u.key == notice.key), None)
    missed = Unreached(
        key=notice.key,
        kind=notice.kind,
        level=notice.level,
        level_name=notice.level_name,
        channel=channel,
        why=why,
        since=earlier.since if earlier else notice.due_at or notice.at,
    )
    return _carried(prior, notice, [missed])


def record_unresolved(state: IncidentState | None, notice: Notice) -> IncidentState | None:
    """The incident after its `resolved` reply `notice` could not be delivered to its thread:
    open again when a reply of the same run to another thread closed it (None: nothing to
    change), so the next run decides the resolution again; the replies that went out are in
    the notice log (never sent twice), the one that failed is tried again."""
    if state is None or state.incident != notice.incident or state.resolved_at is None:
        return None
    return state.model_copy(update={"resolved_at": None})


def as_recorded(notice: Notice, state: IncidentState | None) -> Notice:
    """`notice` against its incident as recorded so far in this run (`state`): in the thread
    an earlier notice of the run started in its channel, and no longer saying (in its text or
    its metadata) that a level the run reached since could not be reached."""
    if state is None or state.incident != notice.incident:
        return notice
    update: dict[str, Any] = {}
    threaded = notice.kind in ("escalate", "repeat", "join")
    if threaded and notice.thread_ts is None and notice.channel in state.channel_roots:
        update["thread_ts"] = state.channel_roots[notice.channel]
    unreached = [u for u in notice.unreached if u.key not in state.notices]
    if len(unreached) != len(notice.unreached):
        update["unreached"] = unreached
    # Its metadata too (what a rebuild from Slack reads): a level reached by email earlier in
    # the run is in no Slack message to say so, and would be tried again.
    after = [u for u in notice.state_after.unreached if u.key not in state.notices]
    if len(after) != len(notice.state_after.unreached):
        update["state_after"] = notice.state_after.model_copy(update={"unreached": after})
    return notice.model_copy(update=update) if update else notice


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
    Each payload is `notice_metadata(...)` plus `_channel`, `_ts` and `_top` (a thread root);
    notices posted before the metadata fitted Slack's documented shape (alert labels an object,
    None values present) read the same."""
    incidents: dict[str, IncidentState] = {}
    missed: dict[str, dict[str, Unreached]] = {}  # incident -> levels said not reached
    log: list[PostedNotice] = []
    for p in sorted(payloads, key=lambda p: (p["at"], p["_ts"])):
        at = datetime.fromisoformat(p["at"])
        due = datetime.fromisoformat(p["due_at"]) if p.get("due_at") else at
        log.append(
            PostedNotice(key=p["key"], channel=p["_channel"], ts=p["_ts"], sent_at=at, sink="slack")
        )
        alerts = {a["key"]: alert_from_metadata(a) for a in p.get("alerts") or []}
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
        state.group, state.policy = p["group"], p.get("policy", state.policy)  # it may have moved
        state.notices[p["key"]] = log[-1]
        kind = p["kind"]
        if p.get("_top") and kind in ("fire", "escalate", "repeat"):
            state.channel_roots.setdefault(p["_channel"], p["_ts"])
            if kind == "fire":
                state.root_channel, state.root_ts = p["_channel"], p["_ts"]
        if kind in ("fire", "escalate") and p["level"] >= state.level:
            state.level, state.level_at = p["level"], due
        # The newest notice says which levels were not reached when it was decided (one
        # reached since by email is not in Slack: an older notice's list would resend it).
        missed[p["incident"]] = {
            u["key"]: Unreached.model_validate(u) for u in p.get("unreached") or []
        }
        if kind in ("fire", "escalate", "repeat"):
            state.last_notified_at = at
            state.repeats = int(p.get("repeats") or 0)
        if kind in ("fire", "escalate", "repeat", "update") and alerts:
            state.alerts = alerts
        if kind in ("fire", "join", "escalate", "repeat"):  # a level told of every alert
            state.notified += [k for k in alerts if k not in state.notified]
            if kind == "join":
                state.alerts = {**state.alerts, **alerts}
        if kind == "ack" and state.acked_at is None:
            state.acked_by, state.acked_at = p.get("acked_by"), at
        if kind == "resolved":
            state.resolved_at = at
    for incident, levels in missed.items():  # levels not reached, unless reached since
        state = incidents[incident]
        state.unreached = sorted(
            (u for u in levels.values() if u.key not in state.notices), key=lambda u: u.level
        )
        for u in state.unreached:
            if u.level > state.level:
                state.level, state.level_at = u.level, u.since
    latest: dict[str, IncidentState] = {}
    for state in incidents.values():
        if state.group not in latest or state.started_at > latest[state.group].started_at:
            latest[state.group] = state
    return latest, log
