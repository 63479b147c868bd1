"""SLA escalation against Slack as it behaves (issue 14), on a stand-in as strict as Slack:
channel ids for every read, update and thread key; one incident, its own threads; no second
copy after a 500 or a timeout that came after Slack stored the message; an acknowledgement
that works; the state rebuilt from Slack after Redis lost it. One test (or more) per finding."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from slack_sdk.errors import SlackApiError

from blocks import PrometheusSource, SlackEscalationTarget
from blocks.resolve import FileOutbox
from decisions.burn_rate import evaluate
from decisions.escalation import policy_channels
from decisions.slack_metadata import slack_metadata_problems
from decisions.slo_definitions import SlaDefinitions, parse_definitions
from tasks.prometheus.slis import fetch_measurements
from tasks.sla_delivery import Acknowledged, SlaStore, acknowledge_alert_in_store, deliver
from tasks.slack.threads import NoticeFailed, SlackMessenger
from tests.servers import SlackStandIn
from tests.servers.slack import DEFAULT_TOKEN
from tests.sla.helpers import DEFINITIONS, T0, definitions
from tests.sla.test_delivery import keys, run
from tests.sla.test_escalation import alert

D = definitions()
BY_ID_ONLY = ("chat.update", "conversations.history", "conversations.replies", "conversations.info")


def acknowledge(
    store: SlaStore, target: SlackEscalationTarget, by: str, minute: int
) -> Acknowledged:
    return acknowledge_alert_in_store(
        store,
        SlackMessenger(target),
        D,
        "availability/page-fast",
        by,
        T0 + timedelta(minutes=minute),
    )


def one_incident(store: SlaStore, target: SlackEscalationTarget, start: int) -> None:
    """Fire at `start`, level 2 at +15, resolved at +16."""
    for minute in range(start, start + 16):
        run(store, target, minute)
    run(store, target, start + 16, alerts=[])


def methods(slack: SlackStandIn, since: int = 0) -> Counter[str]:
    return Counter(r.method for r in slack.requests[since:])


# -- 1. Channel names where Slack wants ids ----------------------------------------------------


def test_level_two_replies_and_the_resolved_notice_thread_by_channel_id(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    one_incident(store, slack_target, 0)
    oncall = slack.channel_id("#oncall")
    root, level2, resolved = slack.messages
    assert {m["channel"] for m in (root, level2, resolved)} == {oncall}
    assert root["thread_ts"] is None
    assert level2["thread_ts"] == resolved["thread_ts"] == root["ts"]
    assert "RESOLVED" in root["text"] and root["updates"]  # updated in place, by id
    reads = [r for r in slack.requests if r.method in BY_ID_ONLY]
    ids = {oncall, slack.channel_id("#incidents")}
    assert {r.method for r in reads} == {"chat.update", "conversations.history"}
    assert all(r.body["channel"] in ids for r in reads)
    # Names resolved once (one conversations.list), then from the cache in Redis.
    assert methods(slack)["conversations.list"] == 1


def test_channel_ids_are_cached_in_redis_with_a_ttl(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    target = slack_target.model_copy(update={"channel_cache_ttl_s": 120})
    run(store, target, 0)
    before = len(slack.requests)
    run(store, target, 1)
    assert methods(slack, before) == Counter()  # nothing due, nothing asked of Slack
    scope = SlackMessenger(target).scope
    assert store.cached_channels(scope) == {
        "#oncall": slack.channel_id("#oncall"),
        "#incidents": slack.channel_id("#incidents"),
    }
    key = store.key("slack-channels", scope)
    ttl: Any = store.client.ttl(key)
    assert 0 < ttl <= 120
    assert DEFAULT_TOKEN not in key


def test_conversations_list_is_paged_until_the_channel_is_found(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    for i in range(450):
        slack.add_channel(f"team-{i:03d}")
    late = slack.add_channel("#late-channel", private=True)
    messenger = SlackMessenger(slack_target)
    assert messenger.resolve(["#late-channel"], cache=store) == {"#late-channel": late}
    lists = [r for r in slack.requests if r.method == "conversations.list"]
    assert len(lists) == 3  # 458 channels, 200 a page
    assert lists[0].body["types"] == "public_channel,private_channel"
    assert lists[0].body["exclude_archived"] in ("1", "true", True)
    assert "cursor" not in lists[0].body and all(r.body["cursor"] for r in lists[1:])


def test_a_channel_given_as_an_id_is_checked_with_conversations_info(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    incidents = slack.channel_id("#incidents")
    d = with_policy(incidents)
    messenger = SlackMessenger(slack_target)
    ids = messenger.resolve(policy_channels(d), cache=store)
    assert ids == {
        "#oncall": slack.channel_id("#oncall"),
        "#incidents": incidents,
        incidents: incidents,
    }
    info = [r for r in slack.requests if r.method == "conversations.info"]
    assert [r.body["channel"] for r in info] == [incidents]
    gone = with_policy("C0DELETED")
    report = deliver(
        store,
        SlackMessenger(slack_target),
        gone,
        [alert("latency/page", slo="latency").model_copy(update={"escalation": "other"})],
        T0,
        email=FileOutbox(directory=tmp_path),
    )
    assert "Slack channel C0DELETED not found" in report.delivered[0].note


def test_bot_not_in_the_channel_is_named_and_the_notice_emailed(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    slack.set_member("#oncall", False)
    report = run(store, slack_target, 0, email=FileOutbox(directory=tmp_path))
    [d] = report.delivered
    assert d.outcome == "email fallback"
    assert f"the Slack bot is not in #oncall ({slack.channel_id('#oncall')})" in d.note
    assert "/invite" in d.note and "emailed oncall@example.test" in d.note
    assert methods(slack)["chat.postMessage"] == 0  # known before posting
    assert len(list(tmp_path.glob("*.eml"))) == 1
    # Slack's own answer says the same (the stand-in, as Slack: history needs membership).
    with pytest.raises(SlackApiError, match="not_in_channel"):
        slack_target.get_client().conversations_history(channel=slack.channel_id("#oncall"))


@pytest.mark.parametrize("private", [False, True])
def test_a_missing_channel_is_named(
    store: SlaStore,
    slack_target: SlackEscalationTarget,
    slack: SlackStandIn,
    tmp_path: Path,
    private: bool,
) -> None:
    if private:  # a private channel without the bot does not exist for it
        slack.add_channel("#secret", private=True, member=False)
    d = with_policy("#secret" if private else "#nope")
    messenger = SlackMessenger(slack_target)
    report = deliver(
        store,
        messenger,
        d,
        [alert("latency/page", slo="latency").model_copy(update={"escalation": "other"})],
        T0,
        email=FileOutbox(directory=tmp_path),
    )
    [notice] = report.delivered
    name = "#secret" if private else "#nope"
    assert notice.outcome == "email fallback"
    assert f"Slack channel {name} not found" in notice.note


def with_policy(channel: str) -> SlaDefinitions:
    """The test definitions plus an escalation policy `other` posting to `channel`."""
    policy = (
        "  - name: other\n    email_fallback: [other@example.test]\n    levels:\n"
        f'      - {{name: team, channel: "{channel}", after: 15m}}\n'
    )
    return parse_definitions(DEFINITIONS.replace("slos:\n", policy + "slos:\n", 1), "t.yaml")


# -- 1 (continued) and 5. A Redis that lost its data ---------------------------------------------


def test_redis_restart_rebuilds_by_id_resumes_and_resolves_in_the_original_thread(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    for minute in range(0, 20):
        run(store, slack_target, minute)
    store.client.flushdb()  # Redis without persistence restarted
    before = len(slack.requests)
    report = run(store, slack_target, 20)
    assert "state rebuilt from slack: 2 notices, 1 incidents (1 open)" in report.recovered
    assert report.delivered == []  # no new incident
    # One list (the channel cache went with Redis), each channel's history, one thread.
    assert methods(slack, before) == Counter(
        {"conversations.list": 1, "conversations.history": 2, "conversations.replies": 1}
    )
    for minute in range(21, 50):
        run(store, slack_target, minute)
    report = run(store, slack_target, 50, alerts=[])
    assert [d.kind for d in report.delivered] == ["resolved", "resolved"]
    root = slack.messages[0]
    assert [k.split(":", 2)[-1] for k in keys(slack)] == [
        "fire:1",
        "escalate:2",
        "escalate:3",
        "resolved:1",
        "resolved:2",
    ]
    level3 = slack.messages[2]
    assert level3["channel"] == slack.channel_id("#incidents") and level3["thread_ts"] is None
    resolved_oncall, resolved_incidents = slack.messages[3:]
    assert resolved_oncall["thread_ts"] == root["ts"]
    assert resolved_incidents["thread_ts"] == level3["ts"]
    assert len({m["metadata"]["event_payload"]["incident"] for m in slack.messages}) == 1


def test_after_redis_lost_its_state_alerts_and_the_ack_are_rebuilt_as_they_were(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """The stand-in refuses metadata outside Slack's documented shape: what rebuilds here is
    only what Slack itself would have kept (labels, None values, who acknowledged)."""
    quiet = alert("latency/page-slow").model_copy(
        update={
            "value": None,
            "objective": None,
            "burn_rate": None,
            "labels": {"slo": "availability", "route": "/a,b=c"},
        }
    )
    firing = [alert("availability/page-fast"), quiet]
    for minute in range(0, 6):
        run(store, slack_target, minute, alerts=firing)
    assert acknowledge(store, slack_target, "alice", 6).newly_acked
    [before] = store.incidents().values()
    assert all(slack_metadata_problems(m["metadata"]) == [] for m in slack.messages)
    store.client.flushdb()
    report = run(store, slack_target, 7, alerts=firing)
    assert report.recovered.startswith("state rebuilt from slack") and report.delivered == []
    [after] = store.incidents().values()
    assert after.alerts == before.alerts
    assert after.alerts["latency/page-slow"].value is None
    assert (after.acked_by, after.acked_at) == ("alice", before.acked_at)
    assert (after.level, after.root_ts, after.incident) == (
        before.level,
        before.root_ts,
        before.incident,
    )


def test_metadata_outside_slacks_shape_is_refused_before_anything_is_sent(
    slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    bad = {"key": "k", "alerts": [{"key": "a", "labels": {"slo": "x"}}], "acked_by": None}
    with pytest.raises(NoticeFailed) as refused:
        SlackMessenger(slack_target).post("#oncall", "x", [], bad)
    assert refused.value.permanent and refused.value.reason == "invalid_metadata_format"
    assert "alerts[0].labels" in str(refused.value) and slack.requests == []


# -- 2. One incident, its own threads -------------------------------------------------------------


def test_a_new_incident_gets_its_own_thread(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    one_incident(store, slack_target, 0)
    one_incident(store, slack_target, 30)
    roots = [m for m in slack.messages if m["thread_ts"] is None]
    assert len(roots) == 2
    for root in roots:
        incident = root["metadata"]["event_payload"]["incident"]
        replies = [
            m
            for m in slack.messages
            if m["thread_ts"] and m["metadata"]["event_payload"]["incident"] == incident
        ]
        assert [r["metadata"]["event_payload"]["kind"] for r in replies] == [
            "escalate",
            "resolved",
        ]
        assert {r["thread_ts"] for r in replies} == {root["ts"]}
        assert "RESOLVED" in root["text"]


# -- 3. A 500 or a timeout after Slack stored the message -----------------------------------------


def test_500_after_slack_stored_the_message_is_not_posted_again(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    email = FileOutbox(directory=tmp_path)
    slack.fail_next(500, method="chat.postMessage", after_handling=True)
    report = run(store, slack_target, 0, email=email)
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert report.delivered[0].ts == slack.messages[0]["ts"]
    for minute in range(1, 15):
        run(store, slack_target, minute, email=email)
    slack.fail_next(500, method="chat.postMessage", after_handling=True)  # the level-2 post
    report = run(store, slack_target, 15, email=email)
    assert [(d.kind, d.outcome) for d in report.delivered] == [("escalate", "sent")]
    assert len(keys(slack)) == len(set(keys(slack))) == 2
    assert slack.messages[1]["thread_ts"] == slack.messages[0]["ts"]
    assert list(tmp_path.glob("*.eml")) == []
    posts = [r.status for r in slack.requests if r.method == "chat.postMessage"]
    assert posts == [500, 500]  # each stored once, found, never re-posted


def test_answer_held_past_the_timeout_is_found_not_emailed(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    slack.delay_next(1.5, method="chat.postMessage")  # stored, answered after the 1 s timeout
    report = run(store, slack_target, 0, email=FileOutbox(directory=tmp_path))
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert len(slack.messages) == 1 and list(tmp_path.glob("*.eml")) == []


def test_500_before_slack_stored_the_message_posts_it_once(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.fail_next(503, count=2, method="chat.postMessage")
    report = run(store, slack_target, 0)
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert len(slack.messages) == 1
    assert [r.status for r in slack.requests if r.method == "chat.postMessage"] == [503, 503, 200]


def test_the_client_never_reposts_chat_post_message_but_retries_reads_and_updates(
    slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    client = slack_target.get_client()
    oncall = slack.channel_id("#oncall")
    slack.fail_next(500, method="chat.postMessage", after_handling=True)
    with pytest.raises(SlackApiError):
        client.chat_postMessage(channel=oncall, text="once")
    assert len(slack.messages) == 1  # stored, and not posted a second time
    slack.fail_next(503, count=2, method="chat.update")
    client.chat_update(channel=oncall, ts=slack.messages[0]["ts"], text="edited")
    slack.fail_next(503, method="conversations.history")
    assert client.conversations_history(channel=oncall)["messages"]


# -- 4. Acknowledgement -------------------------------------------------------------------------


def test_ack_after_redis_lost_its_state_stops_escalation_and_says_so_in_the_thread(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    for minute in range(0, 6):
        run(store, slack_target, minute)
    store.client.flushdb()
    done = acknowledge(store, slack_target, "alice", 6)
    assert done.newly_acked and done.state.acked_by == "alice"
    [reply] = done.replies
    assert reply.outcome == "sent" and reply.channel == "#oncall"
    ack = slack.messages[-1]
    assert ack["thread_ts"] == slack.messages[0]["ts"]
    assert ack["channel"] == slack.channel_id("#oncall")
    assert "Acknowledged by *alice*" in str(ack["blocks"]) and "escalation stopped" in str(
        ack["blocks"]
    )
    for minute in range(7, 130):
        report = run(store, slack_target, minute)
        assert report.delivered == []
    report = run(store, slack_target, 130, alerts=[])
    assert [d.kind for d in report.delivered] == ["resolved"]
    assert [k.split(":", 2)[-1] for k in keys(slack)] == ["fire:1", "ack:1", "resolved:1"]


def test_an_ack_reply_slack_refused_is_posted_when_run_again(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    run(store, slack_target, 0)
    slack.set_member("#oncall", False)  # removed from the channel after the first notice
    done = acknowledge(store, slack_target, "alice", 0)
    assert done.newly_acked and [r.outcome for r in done.failed_replies] == ["failed"]
    assert "not_in_channel" in done.failed_replies[0].note
    slack.set_member("#oncall", True)
    again = acknowledge(store, slack_target, "bob", 0)
    assert not again.newly_acked and again.state.acked_by == "alice"
    assert [r.outcome for r in again.replies] == ["sent"]
    assert "Acknowledged by *alice*" in str(slack.messages[-1]["blocks"])


# -- Secrets ---------------------------------------------------------------------------------------


def test_the_bot_token_never_reaches_logs_notes_or_redis(
    store: SlaStore,
    slack_target: SlackEscalationTarget,
    slack: SlackStandIn,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    slack.delay_next(1.5, method="chat.postMessage")
    slack.fail_next(500, method="chat.postMessage", after_handling=True)
    notes = []
    for minute in range(0, 16):
        report = run(store, slack_target, minute, email=FileOutbox(directory=tmp_path))
        notes += [d.note for d in report.delivered] + [report.recovered]
    wrong = slack_target.model_copy(update={"bot_token": SecretStr("xoxb-wrong-secret")})
    store.client.flushdb()
    report = run(store, wrong, 16, email=FileOutbox(directory=tmp_path))
    notes += [d.note for d in report.delivered] + [report.recovered]
    assert "invalid_auth" in " ".join(notes)
    stored = " ".join(f"{k} {store.client.dump(k)!r}" for k in store.client.scan_iter("*"))
    for secret in (DEFAULT_TOKEN, "xoxb-wrong-secret"):
        assert secret not in caplog.text
        assert secret not in " ".join(notes)
        assert secret not in stored


def test_a_password_in_the_prometheus_url_never_reaches_slack(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """The no-data alert's reason says why Prometheus could not be read: its URL, without the
    password a Prometheus behind basic auth is given in it."""
    source = PrometheusSource(url="http://alice:s3cret-pw@127.0.0.1:9", retries=0, timeout_s=2)
    m = fetch_measurements(source, D, T0)
    since = {s.name: T0 - timedelta(minutes=15) for s in D.slos + D.alert_rules}
    ev = evaluate(D, m.slos, m.rules, m.degradations, T0, since)
    assert ev.alerts and all(a.key.endswith("/no-data") for a in ev.alerts)
    assert all("cannot reach Prometheus at http://127.0.0.1:9" in a.reason for a in ev.alerts)
    report = deliver(store, SlackMessenger(slack_target), D, ev.alerts, T0)
    assert {d.outcome for d in report.delivered} == {"sent"}
    posted = repr(slack.messages)
    assert "cannot reach Prometheus at http://127.0.0.1:9" in posted and "s3cret-pw" not in posted
    assert all("s3cret-pw" not in s.detail for s in ev.statuses)
