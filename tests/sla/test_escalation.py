"""The pure escalation state machine: levels at their delays, ack, repeat, resolve, grouping,
inhibition, silences; rebuilding state from the notices' metadata."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from decisions.burn_rate import Alert
from decisions.escalation import (
    IncidentState,
    Notice,
    Plan,
    PostedNotice,
    acknowledge,
    acknowledgement,
    as_recorded,
    continuing,
    decide,
    policy_channels,
    reached_channels,
    rebuild,
    record,
    record_unreached,
)
from decisions.sla_notices import notice_blocks, notice_metadata, notice_text
from decisions.slack_metadata import slack_metadata_problems
from decisions.slo_definitions import SlaDefinitions, parse_definitions
from perfops.errors import ConfigurationError
from tests.sla.helpers import DEFINITIONS, T0, definitions

D = definitions()


def alert(key: str, severity: str = "critical", slo: str = "availability") -> Alert:
    name, _, condition = key.partition("/")
    return Alert(
        key=key,
        name=name,
        condition=condition,
        kind="slo",
        slo=slo,
        severity=severity,
        labels={"slo": slo, "alertname": condition, "severity": severity},
        value=0.98,
        objective=0.999,
        reason=f"{key} burning",
        burn_rate=20.0,
        budget_remaining=0.5,
        runbook="https://runbooks.example.test/x",
    )


class Sim:
    """Drive `decide` minute by minute, 'sending' every notice (ts = minute); a notice to a
    channel in `unreachable` is not delivered (recorded as such, as delivery does)."""

    def __init__(self, definitions: SlaDefinitions = D) -> None:
        self.states: dict[str, IncidentState] = {}
        self.sent: list[Notice] = []
        self.failed: list[Notice] = []
        self.definitions = definitions
        self.unreachable: set[str] = set()

    def step(self, now: datetime, alerts: list[Alert]) -> Plan:
        plan = decide(now, alerts, self.states, self.definitions)
        for old, moved in plan.moved.items():
            del self.states[old]
            self.states[moved.group] = moved
        self.states.update(plan.states)
        for n in plan.notices:
            n = as_recorded(n, self.states.get(n.group))
            if n.channel in self.unreachable:
                why = f"Slack channel {n.channel} not found"
                self.states[n.group] = record_unreached(self.states.get(n.group), n, why, n.channel)
                self.failed.append(n)
                continue
            posted = PostedNotice(
                key=n.key,
                channel=n.channel,
                ts=f"{now.timestamp():.6f}",
                sent_at=now,
                sink="slack",
            )
            self.states[n.group] = record(self.states.get(n.group) or n.state_after, n, posted)
            self.sent.append(n)
        return plan

    def run(self, start: datetime, minutes: int, alerts: list[Alert]) -> None:
        for i in range(minutes):
            self.step(start + timedelta(minutes=i), alerts)


def test_new_alert_notifies_level_one_at_once_then_escalates_at_the_delays() -> None:
    sim = Sim()
    sim.run(T0, 120, [alert("availability/page-fast")])
    kinds = [(n.kind, n.level, n.at - T0, n.channel) for n in sim.sent]
    assert kinds[:3] == [
        ("fire", 1, timedelta(0), "#oncall"),
        ("escalate", 2, timedelta(minutes=15), "#oncall"),
        ("escalate", 3, timedelta(minutes=45), "#incidents"),
    ]
    assert sim.sent[1].mentions == ["U0MGR"] and sim.sent[1].thread_ts is not None
    assert sim.sent[2].thread_ts is None  # a new channel: a new message there
    assert len(sim.sent) == 3  # the repeat interval (2h) is not reached


def test_repeat_interval_reminds_at_the_last_level() -> None:
    sim = Sim()
    sim.run(T0, 45 + 120 + 1, [alert("availability/page-fast")])
    assert [(n.kind, n.at - T0) for n in sim.sent][-1] == ("repeat", timedelta(minutes=165))
    assert sim.sent[-1].key.endswith(":repeat:3.1")


def test_ack_stops_escalation_and_reminders() -> None:
    sim = Sim()
    a = [alert("availability/page-fast")]
    sim.run(T0, 10, a)
    group = next(iter(sim.states))
    sim.states[group] = acknowledge(sim.states[group], "alice", T0 + timedelta(minutes=10))
    sim.run(T0 + timedelta(minutes=10), 300, a)
    assert [n.kind for n in sim.sent] == ["fire"]
    assert sim.states[group].acked_by == "alice"


def test_resolution_posts_in_the_same_thread_and_updates_the_first_message() -> None:
    sim = Sim()
    sim.run(T0, 20, [alert("availability/page-fast")])
    root = sim.states[next(iter(sim.states))].root_ts
    sim.step(T0 + timedelta(minutes=20), [])
    resolved = sim.sent[-1]
    assert resolved.kind == "resolved"
    assert resolved.thread_ts == root and resolved.update_ts == root
    assert "resolved after 20 min" in notice_text(resolved, 20)
    # Once resolved, a new firing is a new incident with new keys.
    sim.step(T0 + timedelta(minutes=30), [alert("availability/page-fast")])
    assert sim.sent[-1].kind == "fire" and sim.sent[-1].incident != resolved.incident


def test_slack_text_escapes_its_control_characters_and_the_email_keeps_them() -> None:
    sim = Sim()
    raw = alert("errors&latency/p95<0.3s")
    odd = raw.model_copy(update={"reason": "p95 0.42 s > 0.3 s & errors < 1 % <@U999>"})
    sim.step(T0, [odd])
    [notice] = sim.sent
    section = notice_blocks(notice)[1]
    assert section["text"]["text"] == (
        "p95 0.42 s &gt; 0.3 s &amp; errors &lt; 1 % &lt;@U999&gt;"  # no mention, no lost text
    )
    assert "`errors&amp;latency/p95&lt;0.3s`" in section["fields"][0]["text"]
    assert "] errors&amp;latency:" in notice_text(notice)
    assert "] errors&latency:" in notice_text(notice, slack=False)


def test_grouping_one_message_for_the_alerts_of_one_slo() -> None:
    sim = Sim()
    sim.step(T0, [alert("availability/page-fast"), alert("availability/page-slow")])
    assert len(sim.sent) == 1 and len(sim.sent[0].alerts) == 2
    blocks = notice_blocks(sim.sent[0], "http://prefect/runs/1")
    text = str(blocks)
    assert "availability/page-fast" in text and "availability/page-slow" in text
    assert "Prefect run" in text and "Runbook" in text and "20.0x" in text
    # A third alert joins: a reply in the thread at the current level, the first message
    # re-rendered; when one leaves, only the first message is updated.
    three = [
        alert("availability/page-fast"),
        alert("availability/page-slow"),
        alert("availability/ticket", "critical"),  # a warning would be inhibited
    ]
    sim.step(T0 + timedelta(minutes=1), three)
    join = sim.sent[1]
    assert join.kind == "join" and [a.key for a in join.alerts] == ["availability/ticket"]
    assert join.thread_ts == join.update_ts == sim.states[sim.sent[0].group].root_ts
    sim.step(T0 + timedelta(minutes=2), three)
    assert len(sim.sent) == 2  # nothing new
    sim.step(T0 + timedelta(minutes=3), three[:2])
    assert [n.kind for n in sim.sent] == ["fire", "join", "update"]
    sim.step(T0 + timedelta(minutes=4), three)  # back again: already notified, update only
    assert [n.kind for n in sim.sent] == ["fire", "join", "update", "update"]


def test_inhibition_critical_mutes_warning_of_the_same_slo() -> None:
    plan = decide(
        T0,
        [
            alert("error-rate/threshold", "warning", "error-rate"),
            alert("error-rate-critical/threshold", "critical", "error-rate"),
        ],
        {},
        D,
    )
    assert [a.key for a in plan.notices[0].alerts] == ["error-rate-critical/threshold"]
    assert plan.suppressed[0].alert == "error-rate/threshold"
    assert "inhibited by error-rate-critical/threshold" in plan.suppressed[0].why


def test_silence_until_its_end() -> None:
    d = definitions(
        "silences:\n  - matchers: {slo: '~avail.*'}\n    ends_at: 2026-11-02T12:30:00Z\n"
        "    comment: maintenance\n"
    )
    a = [alert("availability/page-fast")]
    plan = decide(T0, a, {}, d)
    assert plan.notices == [] and "silenced until" in plan.suppressed[0].why
    plan = decide(T0 + timedelta(minutes=30), a, {}, d)
    assert [n.kind for n in plan.notices] == ["fire"]


def test_same_decision_twice_gives_the_same_idempotency_keys() -> None:
    a = [alert("availability/page-fast")]
    assert decide(T0, a, {}, D).notices[0].key == decide(T0, a, {}, D).notices[0].key


def test_rebuild_from_notice_metadata() -> None:
    sim = Sim()
    sim.run(T0, 50, [alert("availability/page-fast")])
    payloads = [
        {
            **notice_metadata(n),
            "_channel": n.channel,
            "_ts": f"{n.at.timestamp():.6f}",
            "_top": n.thread_ts is None,
        }
        for n in sim.sent
    ]
    states, log = rebuild(payloads)
    original = next(iter(sim.states.values()))
    rebuilt = states[original.group]
    assert rebuilt.level == 3 and rebuilt.level_at == original.level_at
    assert rebuilt.root_ts == original.root_ts and rebuilt.open
    assert set(rebuilt.alerts) == {"availability/page-fast"}
    assert {p.key for p in log} == {n.key for n in sim.sent}
    # Continuing from the rebuilt state sends nothing new until the repeat interval.
    assert (
        decide(T0 + timedelta(minutes=60), [alert("availability/page-fast")], states, D).notices
        == []
    )


def _old_shape(n: Notice) -> dict[str, Any]:
    """`notice_metadata` as perfops wrote it before it fitted Slack's documented shape: each
    alert's labels an object, None values (an alert's value, acked_by) present."""
    return {
        "key": n.key,
        "incident": n.incident,
        "group": n.group,
        "policy": n.state_after.policy,
        "kind": n.kind,
        "level": n.level,
        "at": n.at.isoformat(),
        "started_at": n.started_at.isoformat(),
        "repeats": n.state_after.repeats,
        "alerts": [a.model_dump(mode="json") for a in n.alerts],
        "acked_by": n.state_after.acked_by,
    }


def _acked_incident() -> tuple[Sim, list[Notice]]:
    """Fire, escalate to level 3 (two channels), a second alert joins, then an ack; one alert
    without value or objective (None), labels with commas and equals signs."""
    sim = Sim()
    quiet = alert("latency/page-slow").model_copy(
        update={
            "value": None,
            "objective": None,
            "burn_rate": None,
            "labels": {"slo": "availability", "q": "a=1,b"},
        }
    )
    sim.run(T0, 5, [alert("availability/page-fast")])
    sim.run(T0 + timedelta(minutes=5), 45, [alert("availability/page-fast"), quiet])
    state = sim.states[next(iter(sim.states))]
    replies = acknowledgement(state, "alice", T0 + timedelta(minutes=50))
    return sim, sim.sent + replies


def _with_place(payload: dict[str, Any], n: Notice) -> dict[str, Any]:
    return {
        **payload,
        "_channel": n.channel,
        "_ts": f"{n.at.timestamp():.6f}",
        "_top": n.thread_ts is None,
    }


def test_every_notice_metadata_fits_slacks_documented_shape() -> None:
    _, notices = _acked_incident()
    resolved = Sim()
    resolved.run(T0, 20, [alert("availability/page-fast")])
    resolved.step(T0 + timedelta(minutes=20), [])
    notices += resolved.sent
    assert {n.kind for n in notices} >= {"fire", "join", "escalate", "ack", "resolved"}
    for n in notices:
        payload = notice_metadata(n)
        assert slack_metadata_problems({"event_type": "x", "event_payload": payload}) == []
        assert None not in payload.values()
    # The old shape was outside it: what this guards against.
    old = _old_shape(notices[-1])
    assert slack_metadata_problems({"event_type": "x", "event_payload": old})


@pytest.mark.parametrize("shape", ["current", "old", "mixed"])
def test_rebuild_reads_notices_of_the_current_and_the_old_metadata_shape(shape: str) -> None:
    sim, notices = _acked_incident()

    def payload(i: int, n: Notice) -> dict[str, Any]:
        old = shape == "old" or (shape == "mixed" and i % 2)
        return _with_place(_old_shape(n) if old else notice_metadata(n), n)

    states, log = rebuild([payload(i, n) for i, n in enumerate(notices)])
    original = next(iter(sim.states.values()))
    rebuilt = states[original.group]
    assert rebuilt.alerts == original.alerts  # labels and None values as they were
    assert rebuilt.alerts["latency/page-slow"].value is None
    assert rebuilt.alerts["latency/page-slow"].labels["q"] == "a=1,b"
    assert (rebuilt.level, rebuilt.acked_by) == (original.level, "alice")
    assert rebuilt.acked_at == T0 + timedelta(minutes=50)
    assert {p.key for p in log} == {n.key for n in notices}


def test_a_new_incident_never_continues_the_resolved_ones_threads() -> None:
    sim = Sim()
    a = [alert("availability/page-fast")]
    sim.run(T0, 16, a)  # fire, level 2 in the thread
    sim.step(T0 + timedelta(minutes=16), [])  # resolved
    old = sim.states[next(iter(sim.states))]
    sim.run(T0 + timedelta(minutes=30), 16, a)  # a new incident, escalated at +15
    fire, escalate = sim.sent[-2:]
    assert (fire.kind, escalate.kind) == ("fire", "escalate")
    assert fire.incident != old.incident and fire.thread_ts is None
    new = sim.states[fire.group]
    assert new.root_ts != old.root_ts and escalate.thread_ts == new.root_ts
    assert old.root_ts not in new.channel_roots.values()
    assert all(key.startswith(new.incident) for key in new.notices)
    sim.step(T0 + timedelta(minutes=50), [])
    assert sim.sent[-1].kind == "resolved" and sim.sent[-1].thread_ts == new.root_ts


def test_record_and_continuing_keep_only_the_notices_own_incident() -> None:
    sim = Sim()
    sim.run(T0, 16, [alert("availability/page-fast")])
    sim.step(T0 + timedelta(minutes=16), [])
    resolved = sim.states[next(iter(sim.states))]
    fire = decide(T0 + timedelta(hours=1), [alert("availability/page-fast")], sim.states, D)
    [notice] = fire.notices
    assert continuing(resolved, notice) == notice.state_after
    posted = PostedNotice(key=notice.key, channel="C1", ts="2.0", sent_at=notice.at, sink="slack")
    after = record(resolved, notice, posted)
    assert after.channel_roots == {"C1": "2.0"} and (after.root_channel, after.root_ts) == (
        "C1",
        "2.0",
    )
    assert list(after.notices) == [notice.key]


def test_channels_are_ids_once_resolved() -> None:
    assert policy_channels(D) == ["#oncall", "#incidents"]
    ids = {"#oncall": "C0ONCALL", "#incidents": "C0INCIDENTS"}
    sim = Sim()
    a = [alert("availability/page-fast")]
    for i in range(46):
        now = T0 + timedelta(minutes=i)
        plan = decide(now, a, sim.states, D, ids)
        for n in plan.notices:
            posted = PostedNotice(key=n.key, channel=n.channel, ts=f"{i}.0", sent_at=now, sink="x")
            sim.states[n.group] = record(sim.states.get(n.group), n, posted)
            sim.sent.append(n)
    assert [(n.kind, n.channel, n.thread_ts) for n in sim.sent] == [
        ("fire", "C0ONCALL", None),
        ("escalate", "C0ONCALL", "0.0"),  # the thread is found by the id Slack answered with
        ("escalate", "C0INCIDENTS", None),
    ]
    state = sim.states[sim.sent[0].group]
    assert state.channel_roots == {"C0ONCALL": "0.0", "C0INCIDENTS": "45.0"}


def test_acknowledgement_replies_in_every_thread_of_the_incident() -> None:
    sim = Sim()
    sim.run(T0, 46, [alert("availability/page-fast")])  # reached #oncall and #incidents
    state = sim.states[next(iter(sim.states))]
    replies = acknowledgement(state, "alice", T0 + timedelta(minutes=50))
    assert [(n.kind, n.channel, n.thread_ts) for n in replies] == [
        ("ack", "#oncall", state.channel_roots["#oncall"]),
        ("ack", "#incidents", state.channel_roots["#incidents"]),
    ]
    assert replies[0].state_after.acked_by == "alice"
    again = acknowledgement(replies[0].state_after, "bob", T0 + timedelta(minutes=55))
    assert [n.key for n in again] == [n.key for n in replies]  # the first ack stays
    assert again[0].state_after.acked_by == "alice"


# deployments/slos.yaml edited while an incident is open: the CTO level removed; the policy
# renamed (every item now escalates to "platform").
TWO_LEVELS = parse_definitions(
    DEFINITIONS.replace(
        '      - {name: CTO, channel: "#incidents", mentions: [U0CTO], after: 60m}\n', ""
    ),
    "two-levels.yaml",
)
RENAMED = parse_definitions(
    DEFINITIONS.replace("  - name: default\n", "  - name: platform\n")
    .replace("    objective: 0.999\n", "    objective: 0.999\n    escalation: platform\n")
    .replace("    slo: error-rate\n", "    slo: error-rate\n    escalation: platform\n")
    .replace("    slo: api-latency\n", "    slo: api-latency\n    escalation: platform\n"),
    "renamed.yaml",
)


def test_an_incident_past_its_policys_last_level_continues_at_the_last() -> None:
    sim = Sim()
    firing = [alert("availability/page-fast")]
    sim.run(T0, 50, firing)
    assert [n.level for n in sim.sent] == [1, 2, 3]
    sim.definitions = TWO_LEVELS
    plan = sim.step(T0 + timedelta(minutes=50), firing)
    [warning] = plan.warnings
    assert "reached level 3, policy 'default' now has 2: it continues at level 2" in warning
    group = "default:slo=availability"
    assert sim.states[group].level == 2  # saved: warned once
    assert sim.step(T0 + timedelta(minutes=51), firing).warnings == []
    sim.run(T0 + timedelta(minutes=52), 120, firing)
    repeat = sim.sent[-1]  # reminders at the last level now defined, in its channel
    assert (repeat.kind, repeat.level, repeat.level_name) == ("repeat", 2, "engineering manager")
    assert repeat.channel == "#oncall" and repeat.mentions == ["U0MGR"]


def test_an_incident_whose_policy_was_renamed_continues_in_its_thread() -> None:
    sim = Sim()
    firing = [alert("availability/page-fast")]
    sim.run(T0, 5, firing)
    [fired] = sim.sent
    root = sim.states["default:slo=availability"].root_ts
    sim.definitions = RENAMED
    renamed = [firing[0].model_copy(update={"escalation": "platform"})]
    plan = sim.step(T0 + timedelta(minutes=5), renamed)
    assert plan.notices == []  # neither resolved nor fired again
    assert list(plan.moved) == ["default:slo=availability"]
    [warning] = plan.warnings
    assert "policy 'default' is no longer defined" in warning
    assert "continues as group platform:slo=availability under policy 'platform'" in warning
    state = sim.states["platform:slo=availability"]
    assert (state.incident, state.level, state.root_ts) == (fired.incident, 1, root)
    assert "default:slo=availability" not in sim.states
    sim.run(T0 + timedelta(minutes=6), 10, renamed)
    escalated = sim.sent[-1]  # at the old incident's delay, in its thread
    assert (escalated.kind, escalated.level, escalated.incident) == ("escalate", 2, fired.incident)
    assert escalated.thread_ts == state.root_ts and escalated.at == T0 + timedelta(minutes=15)
    sim.step(T0 + timedelta(minutes=20), [])
    assert [n.kind for n in sim.sent] == ["fire", "escalate", "resolved"]


def test_policy_names_the_defined_policies_when_unknown() -> None:
    with pytest.raises(ConfigurationError, match=r"policy 'nope' is not defined .*have default"):
        D.policy("nope")


def test_each_change_of_the_alert_set_is_its_own_update_and_a_retry_the_same() -> None:
    sim = Sim()
    fast, slow = alert("availability/page-fast"), alert("availability/page-slow")
    for minute, firing in enumerate([[fast], [fast, slow], [fast], [fast, slow], [fast]]):
        sim.step(T0 + timedelta(minutes=minute), firing)
    updates = [n for n in sim.sent if n.kind == "update"]
    assert len(updates) == 3 and len({n.key for n in updates}) == 3  # A+B -> A comes twice
    assert {n.level_name for n in updates} == {"team lead"}
    state = sim.states["default:slo=availability"]
    again = decide(T0 + timedelta(minutes=5), [fast, slow], {state.group: state}, D)
    twice = decide(T0 + timedelta(minutes=5), [fast, slow], {state.group: state}, D)
    assert [n.key for n in again.notices] == [n.key for n in twice.notices]


# Three levels, each its own channel, no email fallback.
THREE_CHANNELS = parse_definitions(
    DEFINITIONS.replace("    email_fallback: [oncall@example.test]\n", "")
    .replace('channel: "#oncall", after: 15m', 'channel: "#team-lead", after: 15m')
    .replace('channel: "#oncall", mentions: [U0MGR]', 'channel: "#eng-manager", mentions: [U0MGR]')
    .replace('channel: "#incidents", mentions: [U0CTO]', 'channel: "#cto", mentions: [U0CTO]'),
    "three-channels.yaml",
)
MIN = timedelta(minutes=1)


def test_a_level_not_reached_does_not_hold_back_the_next_and_is_tried_again() -> None:
    """Level 1's channel refused every notice: the incident never got past level 1 (each run
    decided its FIRING again), so the engineering manager was never told."""
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead"}
    firing = [alert("availability/page-fast")]
    sim.run(T0, 46, firing)
    # Level 1 tried every minute under one key; levels 2 and 3 at their delays from the start.
    assert {n.key for n in sim.failed} == {f"{sim.failed[0].incident}:fire:1"}
    assert len(sim.failed) == 46 and sim.failed[-1].due_at == T0
    assert [(n.kind, n.level, n.at - T0, n.channel) for n in sim.sent] == [
        ("escalate", 2, 15 * MIN, "#eng-manager"),
        ("escalate", 3, 45 * MIN, "#cto"),
    ]
    level2, _ = sim.sent
    assert [(u.level, u.channel, u.since) for u in level2.unreached] == [(1, "#team-lead", T0)]
    assert level2.thread_ts is None  # the first message in #eng-manager
    text = notice_text(level2, 15)
    assert text.endswith("<@U0MGR> - level 1 (team lead) could not be reached")
    warning = notice_blocks(level2)[-2]["text"]["text"]
    assert warning.startswith(":warning: Level 1 (team lead, #team-lead) could not be reached")
    assert "since 2026-11-02 12:00 UTC: Slack channel #team-lead not found" in warning
    state = sim.states[level2.group]
    assert (state.level, state.level_at, state.root_ts) == (3, T0 + 45 * MIN, None)
    # The channel fixed: level 1 gets its (late) first message once, in its own channel.
    sim.unreachable = set()
    sim.run(T0 + 46 * MIN, 30, firing)
    [late] = sim.sent[2:]
    assert (late.kind, late.key, late.channel, late.due_at) == (
        "fire",
        sim.failed[0].key,
        "#team-lead",
        T0,
    )
    state = sim.states[late.group]
    assert state.unreached == [] and state.root_channel == "#team-lead"
    assert (state.level, state.level_at) == (3, T0 + 45 * MIN)  # the clock did not move
    sim.step(T0 + 80 * MIN, [])  # resolved in every thread, level 1's included
    assert [(n.kind, n.channel) for n in sim.sent[3:]] == [
        ("resolved", "#team-lead"),
        ("resolved", "#eng-manager"),
        ("resolved", "#cto"),
    ]


def test_two_levels_not_reached_are_both_named_by_the_third() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead", "#eng-manager"}
    sim.run(T0, 46, [alert("availability/page-fast")])
    [level3] = sim.sent
    assert (level3.kind, level3.level, level3.at) == ("escalate", 3, T0 + 45 * MIN)
    assert [(u.level, u.since) for u in level3.unreached] == [(1, T0), (2, T0 + 15 * MIN)]
    assert "level 1 (team lead), level 2 (engineering manager) could not be reached" in (
        notice_text(level3, 45)
    )
    # Tried again each run: level 2 since its first attempt, under its own key.
    retries = [n for n in sim.failed if n.at == T0 + 45 * MIN]
    assert [(n.kind, n.level, n.due_at) for n in retries] == [
        ("fire", 1, T0),
        ("escalate", 2, T0 + 15 * MIN),
    ]


def test_acknowledging_stops_the_tries_and_replies_only_where_the_incident_was_seen() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead"}
    firing = [alert("availability/page-fast")]
    sim.run(T0, 16, firing)
    state = sim.states[next(iter(sim.states))]
    assert reached_channels(state) == ["#eng-manager"]  # not #team-lead: never seen there
    replies = acknowledgement(state, "alice", T0 + 16 * MIN)
    assert [(n.channel, n.thread_ts) for n in replies] == [
        ("#eng-manager", state.channel_roots["#eng-manager"])
    ]
    sim.states[state.group] = replies[0].state_after
    tried = len(sim.failed)
    sim.run(T0 + 17 * MIN, 60, firing)
    assert len(sim.failed) == tried and len(sim.sent) == 1  # no tries, no level 3


def test_an_incident_no_level_of_which_was_reached_resolves_without_a_notice() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead"}
    sim.run(T0, 10, [alert("availability/page-fast")])
    state = sim.states[next(iter(sim.states))]
    assert reached_channels(state) == []
    plan = sim.step(T0 + 10 * MIN, [])
    assert plan.notices == [] and sim.states[state.group].resolved_at == T0 + 10 * MIN
    [warning] = plan.warnings
    assert warning.startswith(f"incident {state.incident} resolved without a notice: no level")
    assert "Slack channel #team-lead not found" in warning
    # Alert changes of an incident without a first message update the state only.
    sim2 = Sim(THREE_CHANNELS)
    sim2.unreachable = {"#team-lead"}
    sim2.step(T0, [alert("availability/page-fast"), alert("availability/page-slow")])
    plan = sim2.step(T0 + MIN, [alert("availability/page-fast")])
    assert [n.kind for n in plan.notices] == ["fire"]  # the try, no update of a first message
    assert set(sim2.states[state.group].alerts) == {"availability/page-fast"}


def test_a_failed_try_keeps_when_the_level_fell_due() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#eng-manager"}
    sim.run(T0, 20, [alert("availability/page-fast")])
    [missed] = sim.states[next(iter(sim.states))].unreached
    assert (missed.level, missed.since, missed.why) == (
        2,
        T0 + 15 * MIN,
        "Slack channel #eng-manager not found",
    )
    assert [n.at - T0 for n in sim.failed] == [m * MIN for m in range(15, 20)]
    # A notice that is not a level (a reminder, a join) changes nothing when it fails.
    join = sim.sent[0].model_copy(update={"kind": "join"})
    state = sim.states[join.group]
    assert record_unreached(state, join, "x", "#team-lead") == state


def test_levels_not_reached_survive_a_rebuild_from_the_notices() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead", "#cto"}
    sim.run(T0, 50, [alert("availability/page-fast")])
    original = sim.states[next(iter(sim.states))]
    assert [u.level for u in original.unreached] == [1, 3]
    # Slack holds level 2 only, and a join after level 3 fell due (its metadata names both).
    late = decide(
        T0 + 50 * MIN,
        [alert("availability/page-fast"), alert("availability/page-slow")],
        sim.states,
        THREE_CHANNELS,
    )
    join = next(n for n in late.notices if n.kind == "join")
    for n in [*sim.sent, join]:
        payload = notice_metadata(n)
        assert slack_metadata_problems({"event_type": "x", "event_payload": payload}) == []
    states, _ = rebuild([_with_place(notice_metadata(n), n) for n in [*sim.sent, join]])
    rebuilt = states[original.group]
    assert [(u.key, u.since, u.why) for u in rebuilt.unreached] == [
        (u.key, u.since, u.why) for u in original.unreached
    ]
    assert (rebuilt.level, rebuilt.level_at) == (3, T0 + 45 * MIN)
    assert reached_channels(rebuilt) == ["#eng-manager"]
    # A level reached late is due when it fell due, not when it got through.
    sim.unreachable = set()
    sim.step(T0 + 51 * MIN, [alert("availability/page-fast")])
    fire = next(n for n in sim.sent if n.kind == "fire")
    states, _ = rebuild([_with_place(notice_metadata(n), n) for n in sim.sent])
    assert fire.due_at == T0 and states[original.group].unreached == []
    assert states[original.group].level_at == T0 + 45 * MIN


def test_the_last_level_not_reached_is_tried_again_not_reminded() -> None:
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#cto"}
    firing = [alert("availability/page-fast")]
    sim.run(T0, 45 + 125, firing)  # past the repeat interval (2h) after level 3 fell due
    assert {(n.kind, n.level) for n in sim.failed} == {("escalate", 3)}  # no STILL FIRING
    sim.unreachable = set()
    sim.run(T0 + 170 * MIN, 125, firing)
    assert [(n.kind, n.level, n.at - T0) for n in sim.sent[2:]] == [
        ("escalate", 3, 170 * MIN),  # late, once
        ("repeat", 3, 170 * MIN + 120 * MIN),  # then reminders every 2 h from it
    ]


def test_levels_reached_late_in_one_run_share_their_channels_thread() -> None:
    """Levels 1 and 2 share #oncall: once it works, both are tried in one run; the second is a
    reply under the first message the first just posted, not a second top-level message."""
    sim = Sim()
    sim.unreachable = {"#oncall"}
    firing = [alert("availability/page-fast")]
    sim.run(T0, 46, firing)
    [cto] = sim.sent
    assert (cto.kind, cto.level, cto.channel) == ("escalate", 3, "#incidents")
    assert [u.level for u in cto.unreached] == [1, 2]
    sim.unreachable = set()
    sim.step(T0 + 46 * MIN, firing)
    fire, level2 = sim.sent[1:]
    assert (fire.kind, fire.channel, fire.thread_ts) == ("fire", "#oncall", None)
    state = sim.states[fire.group]
    assert (level2.kind, level2.channel) == ("escalate", "#oncall")
    assert level2.thread_ts == state.root_ts == state.channel_roots["#oncall"]
    assert level2.unreached == []  # level 1 was reached just before it, in the same run
    assert state.unreached == [] and (state.level, state.level_at) == (3, T0 + 45 * MIN)


def test_silencing_an_open_incident_mutes_it_without_a_false_resolved() -> None:
    """Regression: a silence added under an open incident (maintenance: stop the pages) made
    its alerts 'not firing', so the incident resolved with a RESOLVED reply while the outage
    went on, and the silence's end fired it again as a new incident from level 1. Muted, it
    sends nothing (no resolved, no escalation, no reminder) and goes on when the silence ends."""
    silenced = definitions(
        "silences:\n  - matchers: {slo: availability}\n    ends_at: 2026-11-02T13:00:00Z\n"
        "    comment: maintenance\n"
    )
    a = [alert("availability/page-fast")]
    sim = Sim()
    sim.step(T0, a)  # before the silence: fired
    assert [n.kind for n in sim.sent] == ["fire"]
    incident = sim.sent[0].incident
    sim.definitions = silenced  # the silence added to slos.yaml
    plan = sim.step(T0 + timedelta(minutes=20), a)  # past level 1's 15 min: no escalation
    assert plan.notices == []
    assert any("muted" in w for w in plan.warnings)
    group = next(iter(sim.states))
    assert sim.states[group].open and sim.states[group].incident == incident
    # The silence ends with the alert still firing: the same incident escalates.
    plan = sim.step(T0 + timedelta(minutes=61), a)
    assert [(n.kind, n.incident) for n in plan.notices] == [("escalate", incident)]
    # An alert that stops firing while silenced resolves its incident, said in the thread.
    sim = Sim()
    sim.step(T0, a)
    sim.definitions = silenced
    assert sim.step(T0 + timedelta(minutes=5), a).notices == []
    plan = sim.step(T0 + timedelta(minutes=6), [])
    assert [(n.kind, n.incident) for n in plan.notices] == [("resolved", incident)]


REGROUPED = parse_definitions(
    DEFINITIONS.replace(
        "    repeat_interval: 2h\n", "    repeat_interval: 2h\n    group_by: [slo, severity]\n"
    ),
    "regrouped.yaml",
)


def test_an_incident_whose_group_by_was_edited_continues_in_its_thread() -> None:
    """Regression: editing a policy's group_by under an open incident regrouped its alerts, so
    the incident resolved (a false RESOLVED while still firing) and the same alerts fired again
    as a new incident from level 1. It moves to the new group, as for a renamed policy."""
    sim = Sim()
    firing = [alert("availability/page-fast")]
    sim.run(T0, 5, firing)
    [fired] = sim.sent
    sim.definitions = REGROUPED
    plan = sim.step(T0 + timedelta(minutes=5), firing)
    assert plan.notices == []  # neither resolved nor fired again
    assert list(plan.moved) == ["default:slo=availability"]
    state = sim.states["default:slo=availability,severity=critical"]
    assert (state.incident, state.level) == (fired.incident, 1)
    sim.run(T0 + timedelta(minutes=6), 10, firing)
    assert [(n.kind, n.incident) for n in sim.sent] == [
        ("fire", fired.incident),
        ("escalate", fired.incident),
    ]


MOVED_SLO = parse_definitions(
    DEFINITIONS.replace(
        "escalation_policies:\n",
        "escalation_policies:\n  - name: platform\n    levels:\n"
        '      - {name: platform lead, channel: "#oncall", after: 15m}\n'
        '      - {name: platform manager, channel: "#oncall", after: 30m}\n',
    ).replace("    objective: 0.999\n", "    objective: 0.999\n    escalation: platform\n"),
    "moved-slo.yaml",
)


def test_an_slo_given_another_existing_policy_moves_its_open_incident() -> None:
    """Regression: an SLO given another policy that was already defined (the old one still
    is) resolved its open incident and fired it again under the new policy; docs/sla.md
    says the incident moves, as when its policy is gone."""
    sim = Sim()
    sim.run(T0, 5, [alert("availability/page-fast")])
    [fired] = sim.sent
    sim.definitions = MOVED_SLO
    moved = [alert("availability/page-fast").model_copy(update={"escalation": "platform"})]
    plan = sim.step(T0 + timedelta(minutes=5), moved)
    assert plan.notices == []
    state = sim.states["platform:slo=availability"]
    assert (state.incident, state.policy) == (fired.incident, "platform")
    sim.run(T0 + timedelta(minutes=6), 10, moved)
    assert [(n.kind, n.level_name) for n in sim.sent] == [
        ("fire", "team lead"),
        ("escalate", "platform manager"),
    ]


def test_a_level_emailed_late_in_a_run_is_not_said_unreached_by_the_runs_later_notices() -> None:
    """Regression: a level not reached, tried again and delivered by email, then a later notice
    of the same run posted in Slack: that notice's metadata still listed the level as not
    reached (decided before the try), so after Redis lost its data the state rebuilt from Slack
    tried the level again: a second email (the emailed notice is not in Slack to say otherwise)."""
    sim = Sim(THREE_CHANNELS)
    sim.unreachable = {"#team-lead"}
    firing = [alert("availability/page-fast")]
    sim.run(T0, 15, firing)  # level 1 not reached
    at = T0 + 15 * MIN
    plan = decide(at, firing, sim.states, THREE_CHANNELS)
    retry, escalate = plan.notices
    assert (retry.kind, retry.due_at, escalate.kind) == ("fire", T0, "escalate")
    # Slack refused level 1 again; its email went out.
    emailed = PostedNotice(key=retry.key, channel=retry.channel, ts="", sent_at=at, sink="email")
    group = retry.group
    sim.states[group] = record(sim.states[group], as_recorded(retry, sim.states[group]), emailed)
    escalate = as_recorded(escalate, sim.states[group])
    assert escalate.unreached == []  # its text no longer says level 1 was not reached
    assert "unreached" not in notice_metadata(escalate)  # nor does its metadata
    posted = PostedNotice(
        key=escalate.key,
        channel=escalate.channel,
        ts=f"{at.timestamp():.6f}",
        sent_at=at,
        sink="slack",
    )
    sim.states[group] = record(sim.states[group], escalate, posted)
    states, _ = rebuild([_with_place(notice_metadata(escalate), escalate)])
    assert states[group].unreached == []
    assert [n.kind for n in decide(at + MIN, firing, states, THREE_CHANNELS).notices] == []
