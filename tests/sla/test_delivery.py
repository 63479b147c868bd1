"""Delivery on real Redis and the Slack stand-in: exactly one notice per incident and level
across retries, 429/500/timeouts, concurrent evaluators, crashes and a Redis that lost its
data; invalid token -> clear error and email fallback."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect_email import EmailServerCredentials

from blocks import RedisTarget, SlackEscalationTarget
from blocks.resolve import FileOutbox
from decisions.burn_rate import Evaluation
from decisions.escalation import acknowledge
from decisions.slo_definitions import parse_definitions
from tasks import sla_delivery
from tasks.sla_delivery import SlaStore, acknowledge_alert_in_store, deliver
from tasks.slack.threads import FileMessenger, SlackMessenger
from tests.servers import SlackStandIn, SmtpServer
from tests.servers.slack import DEFAULT_TOKEN
from tests.sla.helpers import DEFINITIONS, T0, definitions
from tests.sla.test_escalation import RENAMED, TWO_LEVELS, alert

D = definitions()
FIRING = [alert("availability/page-fast")]
MINUTE = timedelta(minutes=1)


def posts(slack: SlackStandIn) -> list[dict[str, Any]]:
    return slack.messages


def keys(slack: SlackStandIn) -> list[str]:
    return [m["metadata"]["event_payload"]["key"] for m in slack.messages if m["metadata"]]


def run(store: SlaStore, target: SlackEscalationTarget, minute: int, alerts=FIRING, **kw):  # type: ignore[no-untyped-def]
    return deliver(store, SlackMessenger(target), D, alerts, T0 + timedelta(minutes=minute), **kw)


def test_fire_escalate_resolve_in_one_thread(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    report = run(store, slack_target, 0)
    assert [d.outcome for d in report.delivered] == ["sent"]
    root = slack.messages[0]
    assert root["channel"] == slack.channel_id("#oncall") and root["thread_ts"] is None
    assert root["blocks"][0]["type"] == "header" and "FIRING" in root["text"]
    for minute in range(1, 16):
        run(store, slack_target, minute)
    assert len(slack.messages) == 2
    escalation = slack.messages[1]
    assert escalation["thread_ts"] == root["ts"] and "<@U0MGR>" in escalation["text"]
    report = run(store, slack_target, 16, alerts=[])
    assert [d.kind for d in report.delivered] == ["resolved"]
    messages = slack.messages
    resolved = messages[-1]
    assert resolved["thread_ts"] == root["ts"] and "RESOLVED" in resolved["text"]
    assert "RESOLVED" in messages[0]["text"] and messages[0]["updates"]  # root updated
    assert len(keys(slack)) == len(set(keys(slack))) == 3


def test_429_and_500_are_retried_without_duplicates(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.fail_next(429, count=2, retry_after=0, method="chat.postMessage")
    slack.fail_next(500, method="chat.postMessage")
    report = run(store, slack_target, 0)
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert len(slack.messages) == 1
    calls = [(r.method, r.status) for r in slack.requests]
    assert [s for m, s in calls if m == "chat.postMessage"] == [429, 429, 500, 200]
    # After the 500, the channel was read back (by id) before the notice was posted again.
    i = calls.index(("chat.postMessage", 500))
    assert calls[i + 1 : i + 3] == [("conversations.history", 200), ("chat.postMessage", 200)]
    assert slack.requests[i + 1].body["channel"] == slack.channel_id("#oncall")
    run(store, slack_target, 1)  # the next minute: recorded, nothing new
    assert len(slack.messages) == 1


def test_timeout_after_slack_posted_is_found_not_reposted(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.delay_next(1.5, method="chat.postMessage")  # posted, answered after the 1 s timeout
    report = run(store, slack_target, 0)
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert len(slack.messages) == 1
    assert report.delivered[0].ts == slack.messages[0]["ts"]


def test_invalid_token_falls_back_to_email(
    store: SlaStore, slack: SlackStandIn, smtp_server: SmtpServer
) -> None:
    smtp_server.reset()
    target = SlackEscalationTarget(
        bot_token="xoxb-wrong", channels=["#oncall"], api_base_url=slack.base_url, timeout_s=2
    )
    email = EmailServerCredentials(
        smtp_server=smtp_server.host, smtp_port=smtp_server.port, smtp_type="INSECURE"
    )
    report = run(store, target, 0, email=email)
    d = report.delivered[0]
    assert d.outcome == "email fallback" and d.sink == "email"
    assert "invalid_auth" in d.note and "check the bot token" in d.note
    assert "oncall@example.test" in d.note
    _, rcpts, message = smtp_server.wait_for(1)[0]
    assert rcpts == ["oncall@example.test"]
    assert "availability/page-fast" in message.get_content()
    assert slack.messages == []
    assert store.logged(d.key) is not None  # recorded: not emailed again next minute
    run(store, target, 1, email=email)
    assert len(smtp_server.messages) == 1


def test_an_email_fallback_whose_every_recipient_is_refused_is_a_failed_notice(
    store: SlaStore, slack: SlackStandIn, smtp_server: SmtpServer
) -> None:
    """The SMTP server refusing every fallback address (550) is not an email sent."""
    smtp_server.reset()
    target = SlackEscalationTarget(
        bot_token="xoxb-wrong", channels=["#oncall"], api_base_url=slack.base_url, timeout_s=2
    )
    email = EmailServerCredentials(
        smtp_server=smtp_server.host, smtp_port=smtp_server.port, smtp_type="INSECURE"
    )
    refused = parse_definitions(
        DEFINITIONS.replace("[oncall@example.test]", "[nobody@example.test]"), "refused.yaml"
    )
    report = deliver(store, SlackMessenger(target), refused, FIRING, T0, email=email)
    [d] = report.delivered
    assert (d.outcome, d.sink) == ("failed", "skipped")
    assert "the email fallback to nobody@example.test failed too: refused: " in d.note
    assert "nobody@example.test (550 5.1.1 mailbox unavailable)" in d.note
    assert store.logged(d.key) is None


def test_no_fallback_configured_is_a_failed_notice_with_a_clear_reason(
    store: SlaStore, slack: SlackStandIn
) -> None:
    target = SlackEscalationTarget(
        bot_token="xoxb-wrong", channels=["#oncall"], api_base_url=slack.base_url
    )
    report = run(store, target, 0)
    [d] = report.delivered
    assert (d.outcome, d.sink) == ("failed", "skipped")
    assert re.search(r"invalid_auth.*no email fallback configured", d.note)
    assert store.logged(d.key) is None and store.pending() == []  # refused: nothing to look for


# A second policy whose channel works; the default policy (#oncall) without an email fallback.
TWO_POLICIES = parse_definitions(
    DEFINITIONS.replace("    email_fallback: [oncall@example.test]\n", "").replace(
        "slos:\n",
        "  - name: platform\n"
        "    levels:\n"
        '      - {name: platform on-call, channel: "#incidents", after: 15m}\n'
        "slos:\n",
        1,
    ),
    "two-policies.yaml",
)


def test_a_notice_slack_refuses_without_fallback_does_not_stop_the_others(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.set_member("#oncall", False)
    errors = alert("error-rate-critical/threshold", slo="error-rate").model_copy(
        update={"escalation": "platform"}
    )
    alerts = [alert("availability/page-fast"), errors]
    report = deliver(store, SlackMessenger(slack_target), TWO_POLICIES, alerts, T0)
    outcomes = {d.group: (d.outcome, d.note) for d in report.delivered}
    failed, why = outcomes["default:slo=availability"]
    assert failed == "failed"
    assert "the Slack bot is not in #oncall" in why and "no email fallback configured" in why
    assert outcomes["platform:slo=error-rate"] == ("sent", "")
    assert [m["channel"] for m in slack.messages] == [slack.channel_id("#incidents")]
    assert store.pending() == []  # Slack refused it: no marker left to look for
    # Once the bot is invited, the next run fires the incident that could not be notified.
    slack.set_member("#oncall", True)
    report = deliver(store, SlackMessenger(slack_target), TWO_POLICIES, alerts, T0 + MINUTE)
    assert [(d.group, d.kind, d.outcome) for d in report.delivered] == [
        ("default:slo=availability", "fire", "sent")
    ]


def test_slack_down_without_fallback_keeps_the_marker_and_the_next_run_sends(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    store.mark_state()
    run(store, slack_target, 0)  # fired
    target = slack_target.model_copy(update={"max_retries": 0})
    slack.fail_next(503, count=2)  # the post and its read-back: maybe stored, unconfirmed
    report = deliver(store, SlackMessenger(target), TWO_POLICIES, FIRING, T0 + 15 * MINUTE)
    [d] = report.delivered
    assert (d.kind, d.outcome) == ("escalate", "failed")
    assert "service_unavailable (HTTP 503)" in d.note and "no email fallback" in d.note
    assert [n.key for n, _ in store.pending()] == [d.key]  # looked for by the next run
    report = deliver(store, SlackMessenger(target), TWO_POLICIES, FIRING, T0 + 16 * MINUTE)
    assert [(x.key, x.outcome) for x in report.delivered] == [(d.key, "sent")]
    assert len(keys(slack)) == len(set(keys(slack))) == 2


def test_an_unconfirmed_first_message_holds_back_the_new_incident_of_its_group(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    store.mark_state()
    target = slack_target.model_copy(update={"max_retries": 0})
    slack.fail_next(503, method="chat.postMessage", after_handling=True)  # stored, then a 503
    slack.fail_next(503, count=2, method="conversations.history")  # and Slack unreadable
    [first] = deliver(store, SlackMessenger(target), D, FIRING, T0).delivered
    assert (first.kind, first.outcome) == ("fire", "failed")
    assert len(slack.messages) == 1 and store.incidents() == {}
    # No incident in Redis: this run decides a new one (another key, the same alerts). While the
    # first message cannot be looked for it waits: it was a second FIRING, and once the first was
    # found, recorded over it (its thread never resolved).
    [late] = deliver(store, SlackMessenger(target), D, FIRING, T0 + MINUTE).delivered
    assert late.kind == "fire" and late.key != first.key and late.outcome == "deferred"
    assert late.note.startswith(f"waits: {first.key} of this group maybe sent, not confirmed")
    assert len(slack.messages) == 1
    report = deliver(store, SlackMessenger(target), D, FIRING, T0 + 2 * MINUTE)
    assert f"notice {first.key} found sent, recorded" in report.recovered
    assert report.delivered == [] and len(slack.messages) == 1
    assert store.incidents()["default:slo=availability"].root_ts == slack.messages[0]["ts"]


def test_two_concurrent_evaluators_send_once(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    errors: list[BaseException] = []

    def evaluator() -> None:
        try:
            for minute in range(0, 50):
                run(store, slack_target, minute)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(keys(slack)) == len(set(keys(slack))) == 3  # fire, level 2, level 3


def test_an_evaluation_older_than_one_already_decided_decides_nothing(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    run(store, slack_target, 0)
    resolved = run(store, slack_target, 5, alerts=[])
    assert [d.kind for d in resolved.delivered] == ["resolved"]
    # The run of minute 4 (still firing then) waited for the lock behind minute 5's, e.g. its
    # Prometheus queries were slow: it fired the resolved incident again as a new one.
    late = run(store, slack_target, 4)
    assert late.delivered == []
    assert late.stale.startswith("nothing decided: an evaluation at 2026-11-02 12:05:00 UTC")
    assert "this one (at 2026-11-02 12:04:00 UTC) is older" in late.stale
    assert [m["text"].split(":")[0] for m in slack.messages] == [
        "RESOLVED [critical] availability"
    ] * 2
    again = run(store, slack_target, 5, alerts=[])  # the same minute again (a retried run)
    assert again.stale == "" and again.delivered == []
    fired = run(store, slack_target, 6)  # the next minute fires a new incident as it should
    assert [d.kind for d in fired.delivered] == ["fire"] and len(slack.messages) == 3


def test_an_older_evaluation_leaves_the_no_data_clocks_as_the_newer_one_wrote_them(
    store: SlaStore,
    slack: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.evaluate_slos import escalate_alerts

    monkeypatch.setenv("PERFOPS_SLACK_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("PERFOPS_SLACK_API_URL", slack.base_url)

    def at(minute: int, no_data_since: dict[str, Any]) -> Evaluation:
        now = T0 + minute * MINUTE
        return Evaluation(at=now, statuses=[], alerts=[], no_data_since=no_data_since)

    escalate_alerts.fn(store, D, at(5, {}), None, None, "")  # the data came back at minute 5
    # The run of minute 4 (no data since minute 0) got the lock last: it restarted the clock
    # the newer run had cleared, so the next gap raised a no-data alert at once.
    late = escalate_alerts.fn(store, D, at(4, {"availability": T0}), None, None, "")
    assert late.stale.startswith("nothing decided")
    assert store.no_data_since() == {}


class CrashAfterSend(SlackMessenger):
    def post(self, *args: Any, **kwargs: Any) -> tuple[str, str]:
        super().post(*args, **kwargs)
        raise KeyboardInterrupt("process killed between send and record")


class CrashBeforeSend(SlackMessenger):
    def post(self, *args: Any, **kwargs: Any) -> tuple[str, str]:
        raise KeyboardInterrupt("process killed between decide and send")


def test_crash_between_send_and_record_is_not_sent_twice(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    with pytest.raises(KeyboardInterrupt):
        deliver(store, CrashAfterSend(slack_target), D, FIRING, T0)
    assert len(slack.messages) == 1
    report = run(store, slack_target, 1)
    assert "found sent, recorded" in report.recovered
    assert len(slack.messages) == 1
    assert report.delivered == []  # the incident was recorded with the notice found


def test_crash_between_decide_and_send_loses_nothing(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    with pytest.raises(KeyboardInterrupt):
        deliver(store, CrashBeforeSend(slack_target), D, FIRING, T0)
    assert slack.messages == []
    report = run(store, slack_target, 1)
    assert [d.outcome for d in report.delivered] == ["sent"]
    assert len(slack.messages) == 1


def test_redis_restart_mid_escalation_recovers_from_slack(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    for minute in range(0, 20):
        run(store, slack_target, minute)
    assert len(slack.messages) == 2  # fire + level 2
    store.client.flushdb()  # Redis without persistence restarted: everything gone
    report = run(store, slack_target, 20)
    assert "state rebuilt from slack: 2 notices, 1 incidents (1 open)" in report.recovered
    assert report.delivered == []  # nothing re-sent
    for minute in range(21, 46):
        run(store, slack_target, minute)
    assert len(keys(slack)) == len(set(keys(slack))) == 3  # level 3 at 45 min, once
    assert slack.messages[-1]["channel"] == slack.channel_id("#incidents")


def test_a_rebuild_that_reads_longer_than_the_lock_renews_it_as_it_reads(
    redis_target: RedisTarget, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """The lock expired while a long Slack history was read back: the run wrote the rebuilt
    state all the same, then raised LockBusy, and a history as long did so on every run."""
    store = SlaStore(redis_target, lock_timeout_s=2)
    both = [*FIRING, alert("error-rate-critical/threshold", slo="error-rate")]
    for minute in range(0, 20):
        run(store, slack_target, minute, alerts=both)
    assert len(slack.messages) == 4  # two incidents, each fired and escalated in its thread
    store.client.flushdb()  # Redis restarted empty
    target = slack_target.model_copy(update={"timeout_s": 10})
    slack.delay_next(1.5, count=2, method="conversations.replies")  # 3 s of reading threads
    report = run(store, target, 20, alerts=both)
    assert "state rebuilt from slack: 4 notices, 2 incidents (2 open)" in report.recovered
    assert report.delivered == [] and len(slack.messages) == 4


def test_ack_stops_escalation_and_survives_a_redis_restart(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    run(store, slack_target, 0)
    done = acknowledge_alert_in_store(
        store,
        SlackMessenger(slack_target),
        D,
        "availability/page-fast",
        "alice",
        T0 + timedelta(minutes=5),
    )
    assert done.newly_acked and done.state.acked_by == "alice"
    assert "Acknowledged by *alice*" in str(slack.messages[-1]["blocks"])
    assert slack.messages[-1]["thread_ts"] == slack.messages[0]["ts"]
    store.client.flushdb()
    for minute in range(6, 60):
        run(store, slack_target, minute)
    assert [k.split(":")[-2] for k in keys(slack)] == ["fire", "ack"]
    with pytest.raises(LookupError, match="no incident for 'nothing/here'"):
        acknowledge_alert_in_store(
            store, SlackMessenger(slack_target), D, "nothing/here", "bob", T0
        )


def test_file_outbox_works_the_same(store: SlaStore, tmp_path: Path) -> None:
    messenger = FileMessenger(FileOutbox(directory=tmp_path))
    for minute in range(0, 16):
        deliver(store, messenger, D, FIRING, T0 + timedelta(minutes=minute))
    store.client.flushdb()
    report = deliver(store, messenger, D, [], T0 + timedelta(minutes=16))
    assert "2 notices" in report.recovered
    assert [d.kind for d in report.delivered] == ["resolved"]
    lines = (tmp_path / "messages.jsonl").read_text().splitlines()
    assert len(lines) == 4  # fire, escalate, resolved reply, root update


def test_slack_down_beyond_retries_falls_back_to_email(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    store.mark_state()
    target = slack_target.model_copy(update={"max_retries": 1})
    slack.fail_next(503, count=5, method="chat.postMessage")  # more than the retries
    report = run(store, target, 0, email=FileOutbox(directory=tmp_path))
    d = report.delivered[0]
    assert d.outcome == "email fallback"
    assert "service_unavailable (HTTP 503)" in d.note and "via file" in d.note
    assert len(list(tmp_path.glob("*.eml"))) == 1
    assert slack.messages == []


def test_editing_the_policies_under_an_open_incident_keeps_it_notified(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, tmp_path: Path
) -> None:
    messenger = SlackMessenger(slack_target)
    for minute in (0, 16, 47):  # fire, level 2, level 3
        run(store, slack_target, minute)
    # The CTO level removed: no IndexError, the incident continues at level 2.
    report = deliver(store, messenger, TWO_LEVELS, FIRING, T0 + 50 * MINUTE)
    assert report.delivered == [] and "continues at level 2" in report.warnings[0]
    assert store.incidents()["default:slo=availability"].level == 2
    # The policy renamed: no StopIteration, the incident moves to the group its alert is in
    # now (not resolved, not fired again).
    renamed = [FIRING[0].model_copy(update={"escalation": "platform"})]
    report = deliver(store, messenger, RENAMED, renamed, T0 + 51 * MINUTE)
    assert (
        report.delivered == []
        and "continues as group platform:slo=availability" in (report.warnings[0])
    )
    [(group, state)] = store.incidents().items()
    assert group == "platform:slo=availability" and state.policy == "platform"
    assert len(slack.messages) == 3
    # Slack down: the email fallback is the renamed policy's.
    slack.fail_next(503, count=20)
    failing = slack_target.model_copy(update={"max_retries": 0})
    report = deliver(
        store,
        SlackMessenger(failing),
        RENAMED,
        [],
        T0 + 52 * MINUTE,
        email=FileOutbox(directory=tmp_path),
    )
    assert [(d.kind, d.outcome) for d in report.delivered] == [("resolved", "email fallback")] * 2
    assert all("emailed oncall@example.test" in d.note for d in report.delivered)


def test_a_slack_answer_outliving_the_lock_never_clears_an_acknowledgement(
    redis_target: RedisTarget,
    slack_target: SlackEscalationTarget,
    slack: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The lock's 120 s scaled to 2 s; Slack answers the escalation after 4 s (as retries and
    # Retry-After can), and `sla ack` takes the expired lock meanwhile.
    monkeypatch.setattr(sla_delivery, "LOCK_TIMEOUT_S", 2)
    store = SlaStore(redis_target)
    target = slack_target.model_copy(update={"timeout_s": 10})
    run(store, target, 0)
    slack.delay_next(4, method="chat.postMessage")
    reports = []
    slow = threading.Thread(target=lambda: reports.append(run(store, target, 16)))
    slow.start()
    time.sleep(2.5)
    ack = acknowledge_alert_in_store(
        store, SlackMessenger(target), D, "availability/page-fast", "alice", T0 + 17 * MINUTE
    )
    slow.join()
    assert ack.newly_acked
    state = store.incidents()["default:slo=availability"]
    assert (state.acked_by, state.acked_at) == ("alice", T0 + 17 * MINUTE)  # not cleared
    [report] = reports
    [d] = report.delivered
    assert (d.kind, d.outcome) == ("escalate", "sent")  # Slack has it: logged, never resent
    assert "expired (held over 2 s" in d.note and "acknowledgement there is kept" in d.note
    assert "the rest of this run was not sent or recorded" in report.lock_lost
    assert run(store, target, 47).delivered == []  # acknowledged: no level 3
    assert len(keys(slack)) == len(set(keys(slack))) == 3  # fire, escalate, ack reply


def test_after_the_lock_expired_the_rest_is_not_sent_and_says_why(
    redis_target: RedisTarget, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    store = SlaStore(redis_target, lock_timeout_s=1)  # Slack answers after 2 s
    target = slack_target.model_copy(update={"timeout_s": 10})
    slack.delay_next(2, method="chat.postMessage")  # the first of two new incidents
    both = [*FIRING, alert("error-rate-critical/threshold", slo="error-rate")]
    report = run(store, target, 0, alerts=both)
    first, second = report.delivered
    assert first.outcome == "sent" and "expired (held over 1 s" in first.note
    assert (second.outcome, second.sink) == ("failed", "skipped")
    assert second.note.startswith("not sent: the SLA lock") and "next run decides" in second.note
    assert len(slack.messages) == 1 and list(store.incidents()) == [first.group]  # recorded
    report = run(store, target, 1, alerts=both)  # the next run catches up, nothing twice
    assert [(d.group, d.outcome) for d in report.delivered] == [(second.group, "sent")]
    assert len(keys(slack)) == len(set(keys(slack))) == 2


def test_a_stale_save_keeps_an_acknowledgement_of_the_same_incident(
    store: SlaStore, tmp_path: Path
) -> None:
    deliver(store, FileMessenger(FileOutbox(directory=tmp_path)), D, FIRING, T0)
    [stale] = store.incidents().values()
    store.save(acknowledge(stale, "alice", T0 + MINUTE))
    store.save(stale.model_copy(update={"level": 2}))  # read before the ack, saved after it
    [saved] = store.incidents().values()
    assert (saved.level, saved.acked_by, saved.acked_at) == (2, "alice", T0 + MINUTE)


def test_flapping_alerts_keep_the_first_message_current(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    fast, slow = alert("availability/page-fast"), alert("availability/page-slow")
    for minute, firing in enumerate([[fast], [fast, slow], [fast], [fast, slow], [fast]]):
        report = run(store, slack_target, minute, alerts=firing)
        assert all(d.outcome in ("sent", "already sent") for d in report.delivered)
    kinds = [d.kind for d in report.delivered]
    assert kinds == ["update"] and report.delivered[0].outcome == "sent"  # not "already sent"
    root = slack.messages[0]
    assert root["text"] == "FIRING [critical] availability: level 1 (team lead)"
    assert "page-fast" in str(root["blocks"]) and "page-slow" not in str(root["blocks"])
    assert len(set(keys(slack))) == len(keys(slack))
    assert len(root["updates"]) == 4  # the join re-rendered it, then each of the 3 changes


def test_an_acknowledgement_interrupted_after_its_reply_does_not_reply_twice(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    run(store, slack_target, 0)

    def ack(messenger: SlackMessenger):  # type: ignore[no-untyped-def]
        return acknowledge_alert_in_store(
            store, messenger, D, "availability/page-fast", "alice", T0 + 5 * MINUTE
        )

    with pytest.raises(KeyboardInterrupt):
        ack(CrashAfterSend(slack_target))  # the reply is in Slack, nothing recorded
    done = ack(SlackMessenger(slack_target))
    assert [r.outcome for r in done.replies] == ["already sent"]
    assert done.replies[0].ts == slack.messages[-1]["ts"]
    assert [k.split(":")[-2] for k in keys(slack)] == ["fire", "ack"]  # one reply
    assert done.state.acked_by == "alice" and store.pending() == []


def test_an_acknowledgement_interrupted_before_its_reply_posts_it(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    run(store, slack_target, 0)
    with pytest.raises(KeyboardInterrupt):
        acknowledge_alert_in_store(
            store, CrashBeforeSend(slack_target), D, "availability/page-fast", "bob", T0
        )
    done = acknowledge_alert_in_store(
        store, SlackMessenger(slack_target), D, "availability/page-fast", "bob", T0
    )
    assert [r.outcome for r in done.replies] == ["sent"]
    assert [k.split(":")[-2] for k in keys(slack)] == ["fire", "ack"]
