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


def test_an_unconfirmed_first_message_is_looked_for_not_posted_again(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    store.mark_state()
    target = slack_target.model_copy(update={"max_retries": 0})
    slack.fail_next(503, method="chat.postMessage", after_handling=True)  # stored, then a 503
    slack.fail_next(503, count=2, method="conversations.history")  # and Slack unreadable
    [first] = deliver(store, SlackMessenger(target), D, FIRING, T0).delivered
    assert (first.kind, first.outcome) == ("fire", "failed")
    assert len(slack.messages) == 1
    # The incident is recorded at level 1 all the same (its clock runs from T0), its first
    # message not confirmed: the next run tries it again under the same key, and while it
    # cannot be looked for it waits rather than post a second FIRING.
    [state] = store.incidents().values()
    assert state.incident == first.incident and [u.key for u in state.unreached] == [first.key]
    [late] = deliver(store, SlackMessenger(target), D, FIRING, T0 + MINUTE).delivered
    assert (late.kind, late.key, late.outcome) == ("fire", first.key, "deferred")
    assert late.note.startswith("maybe sent, not confirmed")
    assert len(slack.messages) == 1
    report = deliver(store, SlackMessenger(target), D, FIRING, T0 + 2 * MINUTE)
    assert f"notice {first.key} found sent, recorded" in report.recovered
    assert report.delivered == [] and len(slack.messages) == 1
    [state] = store.incidents().values()
    assert state.root_ts == slack.messages[0]["ts"] and state.unreached == []
    assert state.level_at == T0  # level 2 falls due 15 min after the start


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


# Three levels, three channels, no email fallback: a level whose channel is broken must not
# hold the escalation back.
THREE_CHANNELS = parse_definitions(
    DEFINITIONS.replace("    email_fallback: [oncall@example.test]\n", "")
    .replace('channel: "#oncall", after: 15m', 'channel: "#team-lead", after: 15m')
    .replace('channel: "#oncall", mentions: [U0MGR]', 'channel: "#eng-manager", mentions: [U0MGR]')
    .replace('channel: "#incidents", mentions: [U0CTO]', 'channel: "#cto", mentions: [U0CTO]'),
    "three-channels.yaml",
)


def test_a_level_slack_cannot_reach_does_not_hold_back_the_next_level(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """#team-lead archived, no email fallback: level 1's notice failed every minute and 'the
    next run decides it again', so the engineering manager (level 2, #eng-manager) was never
    told while the SLO burned."""
    slack.set_archived("#team-lead", True)
    messenger = SlackMessenger(slack_target)
    reports = [
        deliver(store, messenger, THREE_CHANNELS, FIRING, T0 + m * MINUTE) for m in range(17)
    ]
    failed = reports[0].delivered[0]
    assert (failed.kind, failed.level, failed.outcome) == ("fire", 1, "failed")
    assert "Slack channel #team-lead not found" in failed.note
    assert "no email fallback configured" in failed.note
    # Level 2 at its delay from the start (15 min), not from a delivery that never came.
    at_15 = {(d.kind, d.level): d for d in reports[15].delivered}
    escalated = at_15[("escalate", 2)]
    assert escalated.outcome == "sent" and escalated.channel == "#eng-manager"
    # ... and that run still fails naming level 1's notice, tried again (the same key).
    assert at_15[("fire", 1)].outcome == "failed" and at_15[("fire", 1)].key == failed.key
    assert "the incident went on to level 1 all the same" in failed.note
    assert at_15[("fire", 1)].note.endswith(
        "level 1 not reached since 2026-11-02 12:00 UTC, the escalation went on without it; "
        "tried again each run"
    )
    [message] = slack.messages
    assert message["channel"] == slack.channel_id("#eng-manager")
    assert message["thread_ts"] is None  # its own first message in #eng-manager
    assert "<@U0MGR>" in message["text"]
    assert "level 1 (team lead) could not be reached" in message["text"]
    assert "#team-lead" in str(message["blocks"]) and "not found" in str(message["blocks"])
    # Once, whatever the minutes after it.
    assert [d.outcome for d in reports[16].delivered if d.kind == "escalate"] == []


def test_a_level_reached_late_gets_its_notice_once_and_every_thread_the_resolution(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.set_member("#eng-manager", False)  # the bot was removed from level 2's channel

    def at(minute: int, alerts: list[Any] = FIRING) -> Any:  # each run its own messenger
        return deliver(
            store, SlackMessenger(slack_target), THREE_CHANNELS, alerts, T0 + minute * MINUTE
        )

    for minute in range(46):
        report = at(minute)
    rows = {(d.kind, d.level): d for d in report.delivered}
    assert rows[("escalate", 3)].outcome == "sent"
    assert rows[("escalate", 3)].note == "said level 2 (#eng-manager) could not be reached"
    assert rows[("escalate", 2)].outcome == "failed"
    assert "the Slack bot is not in #eng-manager" in rows[("escalate", 2)].note
    assert "tried again each run" in rows[("escalate", 2)].note
    cto = slack.messages[-1]
    assert cto["channel"] == slack.channel_id("#cto")
    assert "level 2 (engineering manager) could not be reached" in cto["text"]
    # Invited again (the next run resolves the channel anew): level 2 is told once, in its
    # own channel, and the incident's clock is where it was.
    slack.set_member("#eng-manager", True)
    for minute in range(46, 60):
        report = at(minute)
        assert all(d.outcome in ("sent", "already sent") for d in report.delivered)
    [late] = [m for m in slack.messages if m["channel"] == slack.channel_id("#eng-manager")]
    assert late["thread_ts"] is None and "ESCALATED" in late["text"]
    [state] = store.incidents().values()
    assert state.unreached == [] and state.level_at == T0 + 45 * MINUTE
    report = at(60, [])
    assert sorted(d.channel for d in report.delivered) == ["#cto", "#eng-manager", "#team-lead"]
    assert all(d.outcome == "sent" for d in report.delivered)
    assert len(keys(slack)) == len(set(keys(slack))) == 6  # fire, level 3, 2 late, 3 resolved


def test_levels_not_reached_survive_a_redis_restart_and_are_sent_once(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.set_archived("#team-lead", True)
    messenger = SlackMessenger(slack_target)
    for minute in range(16):
        deliver(store, messenger, THREE_CHANNELS, FIRING, T0 + minute * MINUTE)
    assert len(slack.messages) == 1  # level 2 only
    store.client.flushdb()  # Redis without persistence restarted
    report = deliver(store, SlackMessenger(slack_target), THREE_CHANNELS, FIRING, T0 + 16 * MINUTE)
    assert "state rebuilt from slack: 1 notices, 1 incidents (1 open)" in report.recovered
    [state] = store.incidents().values()
    assert [(u.level, u.channel, u.since) for u in state.unreached] == [(1, "#team-lead", T0)]
    assert [(d.kind, d.outcome) for d in report.delivered] == [("fire", "failed")]
    slack.set_archived("#team-lead", False)
    for minute in range(17, 20):
        deliver(store, SlackMessenger(slack_target), THREE_CHANNELS, FIRING, T0 + minute * MINUTE)
    assert [slack.channel_name(m["channel"]) for m in slack.messages] == [
        "#eng-manager",
        "#team-lead",
    ]
    assert len(keys(slack)) == len(set(keys(slack)))


def test_a_level_tried_again_that_crashed_after_its_send_is_not_sent_twice(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.set_archived("#team-lead", True)
    deliver(store, SlackMessenger(slack_target), THREE_CHANNELS, FIRING, T0)
    slack.set_archived("#team-lead", False)
    with pytest.raises(KeyboardInterrupt):  # the late first message posted, then killed
        deliver(store, CrashAfterSend(slack_target), THREE_CHANNELS, FIRING, T0 + MINUTE)
    report = deliver(store, SlackMessenger(slack_target), THREE_CHANNELS, FIRING, T0 + 2 * MINUTE)
    assert "found sent, recorded" in report.recovered and report.delivered == []
    [state] = store.incidents().values()
    assert state.unreached == [] and state.root_ts == slack.messages[0]["ts"]
    assert len(slack.messages) == 1


def test_two_concurrent_evaluators_escalate_past_a_level_once(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    slack.set_archived("#team-lead", True)
    errors: list[BaseException] = []

    def evaluator() -> None:
        try:
            for minute in range(50):
                messenger = SlackMessenger(slack_target)
                deliver(store, messenger, THREE_CHANNELS, FIRING, T0 + minute * MINUTE)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=evaluator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [k.rsplit(":", 2)[1:] for k in keys(slack)] == [["escalate", "2"], ["escalate", "3"]]
    [state] = store.incidents().values()
    assert [u.level for u in state.unreached] == [1] and store.pending() == []


def test_the_email_fallback_of_a_level_says_which_levels_could_not_be_reached(
    tmp_path: Path,
) -> None:
    from email import message_from_bytes, policy
    from email.message import EmailMessage

    from decisions.escalation import decide, record_unreached

    [fire] = decide(T0, FIRING, {}, THREE_CHANNELS).notices
    states = {
        fire.group: record_unreached(None, fire, "Slack channel #team-lead not found", "#team-lead")
    }
    escalate = next(
        n
        for n in decide(T0 + 15 * MINUTE, FIRING, states, THREE_CHANNELS).notices
        if n.kind == "escalate"
    )
    note = sla_delivery._email_fallback(
        escalate, FileOutbox(directory=tmp_path), ["mgr@example.test"], "perfops@x", "is_archived"
    )
    assert note.startswith("emailed mgr@example.test via file")
    [eml] = tmp_path.glob("*.eml")
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["Subject"].endswith("- level 1 (team lead) could not be reached")
    body = mail.get_content()
    assert (
        "Level 1 (team lead, #team-lead) could not be reached since 2026-11-02 12:00 UTC: " in body
    )
    assert "Slack channel #team-lead not found" in body


def test_a_level_that_failed_after_the_lock_expired_is_not_recorded(
    redis_target: RedisTarget, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """Slack answered the first message's 503 after the lock (1 s) expired: another run may
    hold it now, so the level is not recorded as reached; the next run decides it again."""
    store = SlaStore(redis_target, lock_timeout_s=1)
    target = slack_target.model_copy(update={"timeout_s": 10, "max_retries": 0})
    slack.fail_next(503, method="chat.postMessage")
    slack.delay_next(2, method="chat.postMessage")
    report = deliver(store, SlackMessenger(target), THREE_CHANNELS, FIRING, T0)
    [d] = report.delivered
    assert (d.kind, d.outcome) == ("fire", "failed") and "no email fallback" in d.note
    assert "went on to level" not in d.note and store.incidents() == {}
    assert d.note.endswith("not recorded, the next run decides it again")
    assert "the SLA lock" in d.note and "expired (held over 1 s" in d.note
    assert "the rest of this run was not sent or recorded" in report.lock_lost
    assert [n.key for n, _ in store.pending()] == [d.key]  # maybe stored: looked for next run
    report = deliver(store, SlackMessenger(target), THREE_CHANNELS, FIRING, T0 + MINUTE)
    assert [(x.kind, x.outcome) for x in report.delivered] == [("fire", "sent")]
    assert len(keys(slack)) == len(set(keys(slack))) == 1


@pytest.mark.parametrize("refusing", ["#eng-manager", "#team-lead"])
def test_a_resolved_notice_slack_refused_in_one_thread_is_sent_by_a_later_run(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn, refusing: str
) -> None:
    """Regression: the resolution of an incident seen in two channels, the bot removed from
    the second meanwhile (no email fallback): the first thread's resolved reply went out and
    closed the incident, so the second's, 'decided again by the next run', never was: the
    engineering manager's thread (the level that paged them) stayed FIRING for good."""

    def at(minute: int, alerts: list[Any] = FIRING) -> Any:
        return deliver(
            store, SlackMessenger(slack_target), THREE_CHANNELS, alerts, T0 + minute * MINUTE
        )

    for minute in range(16):
        at(minute)
    assert [m["channel"] for m in slack.messages] == [
        slack.channel_id("#team-lead"),
        slack.channel_id("#eng-manager"),
    ]
    slack.set_member(refusing, False)
    report = at(16, [])
    outcomes = {d.channel: d.outcome for d in report.delivered}
    other = next(c for c in outcomes if c != refusing)
    assert outcomes == {refusing: "failed", other: "sent"}
    [state] = store.incidents().values()
    assert state.open  # not closed until every thread was told
    slack.set_member(refusing, True)
    report = at(17, [])
    outcomes = {d.channel: d.outcome for d in report.delivered}
    assert outcomes == {refusing: "sent", other: "already sent"}
    resolved = [m for m in slack.messages if "RESOLVED" in m["text"] and m["thread_ts"]]
    assert sorted(m["channel"] for m in resolved) == sorted(
        [slack.channel_id("#team-lead"), slack.channel_id("#eng-manager")]
    )
    [state] = store.incidents().values()
    assert not state.open
    assert at(18, []).delivered == []


def test_a_resolved_reply_whose_first_message_was_deleted_is_posted_once(
    store: SlaStore, slack_target: SlackEscalationTarget, slack: SlackStandIn
) -> None:
    """Regression: someone deleted the incident's FIRING message in Slack; the resolved reply
    was posted, then updating the deleted first message failed (message_not_found), so the
    notice counted as failed and was not logged: every run posted RESOLVED again. The reply
    went out: it is recorded, the failed update said in its note."""
    run(store, slack_target, 0)
    root = slack.messages[0]
    slack.delete_message("#oncall", root["ts"])
    report = run(store, slack_target, 1, alerts=[])
    [resolved] = report.delivered
    assert (resolved.kind, resolved.outcome) == ("resolved", "sent")
    assert "message_not_found" in resolved.note
    for minute in (2, 3):
        assert run(store, slack_target, minute, alerts=[]).delivered == []
    assert len([m for m in slack.messages if "RESOLVED" in m["text"]]) == 1
    [state] = store.incidents().values()
    assert not state.open
