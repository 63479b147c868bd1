"""The evaluate_slos and acknowledge_alert flows on a real Prometheus, Redis and the Slack
stand-in; PromQL errors and an unreachable Prometheus are "no data", never "ok"."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from blocks import PrometheusSource, RedisTarget
from decisions.burn_rate import UNREACHABLE, evaluate
from perfops.errors import ConfigurationError
from tasks.prometheus.slis import fetch_measurements
from tests.conftest import REDIS_TEST_URL
from tests.records import artifact_rows, wait_for_events
from tests.servers import PrometheusServer, SlackStandIn, UnhealthyProxy
from tests.servers.slack import DEFAULT_TOKEN
from tests.sla.conftest import OUTAGE, REGRESSION
from tests.sla.helpers import DEFINITIONS, definitions


@pytest.fixture()
def sla_env(
    monkeypatch: pytest.MonkeyPatch,
    sla_prometheus: PrometheusServer,
    slack: SlackStandIn,
    redis_target: RedisTarget,
    tmp_path: Path,
) -> Path:
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", sla_prometheus.url)
    monkeypatch.setenv("PERFOPS_REDIS_URL", REDIS_TEST_URL)
    monkeypatch.setenv("PERFOPS_SLACK_TOKEN", DEFAULT_TOKEN)
    monkeypatch.setenv("PERFOPS_SLACK_API_URL", slack.base_url)
    path = tmp_path / "slos.yaml"
    path.write_text(DEFINITIONS)
    return path


def _at(minutes_after_outage: int) -> datetime:
    return OUTAGE.start + timedelta(minutes=minutes_after_outage)


def test_outage_is_paged_from_real_prometheus(sla_prometheus: PrometheusServer) -> None:
    source = PrometheusSource(url=sla_prometheus.url)
    d = definitions()
    before = fetch_measurements(source, d, _at(-5))
    ev = evaluate(d, before.slos, before.rules, before.degradations, _at(-5))
    assert ev.alerts == []
    status = {s.name: s for s in ev.statuses}["availability"]
    assert status.status == "ok" and status.budget_remaining is not None
    assert 0.85 < status.budget_remaining < 0.95  # 0.01% errors of a 0.1% budget
    during = fetch_measurements(source, d, _at(3))
    ev = evaluate(d, during.slos, during.rules, during.degradations, _at(3))
    keys = {a.key for a in ev.alerts}
    assert "availability/page-fast" in keys and "error-rate-critical/threshold" in keys


def test_latency_regression_against_last_week(sla_prometheus: PrometheusServer) -> None:
    source = PrometheusSource(url=sla_prometheus.url)
    d = definitions()
    at = REGRESSION.start + timedelta(minutes=10)
    m = fetch_measurements(source, d, at)
    ev = evaluate(d, m.slos, m.rules, m.degradations, at)
    assert [a.key for a in ev.alerts] == ["latency-degradation/degraded"]
    assert ev.alerts[0].labels["kind"] == "degradation"


def test_promql_error_and_unreachable_prometheus_are_no_data(
    sla_prometheus: PrometheusServer,
) -> None:
    d = definitions().model_copy(deep=True)
    bad = d.alert_rules[0].model_copy(update={"metric": "sum(rate(http_requests_total[5m]"})
    d = d.model_copy(update={"alert_rules": [bad]})
    m = fetch_measurements(PrometheusSource(url=sla_prometheus.url), d, _at(-5))
    ev = evaluate(d, m.slos, m.rules, m.degradations, _at(-5))
    status = {s.name: s for s in ev.statuses}["error-rate"]
    assert status.status == "no data" and "rejected the query" in status.detail
    down = PrometheusSource(url="http://127.0.0.1:9", retries=0, timeout_s=2)
    m = fetch_measurements(down, d, _at(-5))
    ev = evaluate(d, m.slos, m.rules, m.degradations, _at(-5))
    assert {s.status for s in ev.statuses} == {"no data"}
    assert "cannot reach Prometheus" in ev.statuses[0].detail


def test_flows_notify_escalate_ack_and_resolve(
    prefect_harness: None, sla_env: Path, slack: SlackStandIn
) -> None:
    from flows.acknowledge_alert import acknowledge_alert
    from flows.evaluate_slos import evaluate_slos

    report = evaluate_slos(definitions_path=str(sla_env), at=_at(3))
    assert report.delivery is not None
    assert [d.kind for d in report.delivery.delivered] == ["fire", "fire"]  # two SLO groups
    rows = artifact_rows("perfops-sla")
    assert all(list(r)[:3] == ["item", "result", "reason"] for r in rows)
    assert [r["result"] for r in rows if r["kind"] == "notice fire"] == ["sent", "sent"]
    assert len(slack.messages) == 2
    report = evaluate_slos(definitions_path=str(sla_env), at=_at(3))  # a retried run
    assert report.delivery is not None and report.delivery.delivered == []
    assert len(slack.messages) == 2
    ack = acknowledge_alert(
        alert="error-rate-critical/threshold", by="alice", definitions_path=str(sla_env)
    )
    assert ack.newly_acked and ack.acked_by == "alice"
    [acked] = artifact_rows("perfops-sla-ack")
    assert list(acked)[:3] == ["alert", "result", "reason"] and acked["result"] == "acknowledged"
    report = evaluate_slos(definitions_path=str(sla_env), at=_at(18))
    assert report.delivery is not None
    escalated = [d for d in report.delivery.delivered if d.kind == "escalate"]
    assert [d.group for d in escalated] == ["default:slo=availability"]  # the acked one stays
    # The error-rate rule clears ~5 minutes after the outage; availability's ticket-level burn
    # (3d and 6h windows) keeps its incident open for hours.
    report = evaluate_slos(definitions_path=str(sla_env), at=_at(30))
    assert report.delivery is not None
    resolved = [d for d in report.delivery.delivered if d.kind == "resolved"]
    assert [d.group for d in resolved] == ["default:slo=error-rate"]
    root = next(m for m in slack.messages if "error-rate" in m["text"] and not m["thread_ts"])
    assert slack.messages[-1]["thread_ts"] == root["ts"]
    with pytest.raises(ConfigurationError, match="nothing to acknowledge"):
        acknowledge_alert(alert="error-rate-critical/threshold", definitions_path=str(sla_env))

    # The records the weekly report and the automations read.
    breached = wait_for_events("perfops.sla.breached", at_least=3)
    assert {e.payload["alert"] for e in breached} >= {
        "availability/page-fast",
        "error-rate-critical/threshold",
    }
    for e in breached:
        assert {"alert", "slo", "severity", "level", "value", "objective", "reason"} <= set(
            e.payload
        )
    assert {e.resource.id for e in breached} >= {"perfops.sla.slo.availability"}
    escalated_events = wait_for_events("perfops.sla.escalated", at_least=1)
    assert all(e.payload["level"] == 2 for e in escalated_events)
    assert wait_for_events("perfops.sla.resolved", at_least=1)[0].payload["slo"] == "error-rate"
    evaluated = wait_for_events("perfops.sla.evaluated", at_least=4)
    slo = next(x for x in evaluated[0].payload["slos"] if x["name"] == "availability")
    assert {"name", "objective", "window", "sli", "budget_remaining", "burn_rates"} <= set(slo)
    assert "alerts_firing" in evaluated[0].payload


def test_notices_slack_refuses_without_fallback_end_failed_with_the_records_written(
    prefect_harness: None, sla_env: Path, slack: SlackStandIn
) -> None:
    from flows.evaluate_slos import evaluate_slos

    sla_env.write_text(DEFINITIONS.replace("    email_fallback: [oncall@example.test]\n", ""))
    slack.set_member("#oncall", False)
    state = evaluate_slos(definitions_path=str(sla_env), at=_at(3), return_state=True)
    assert state.is_failed()
    assert state.message is not None
    assert state.message.startswith("2 of 2 notices not sent: default:slo=")
    assert "the Slack bot is not in #oncall" in state.message
    assert "no email fallback configured" in state.message
    rows = artifact_rows("perfops-sla")  # written before the run ended
    notices = [r for r in rows if r["kind"] == "notice fire"]
    assert [r["result"] for r in notices] == ["failed", "failed"]
    assert all("no email fallback configured" in str(r["reason"]) for r in notices)
    assert slack.messages == []


def test_a_level_slack_cannot_reach_is_escalated_past_and_the_run_fails_naming_it(
    prefect_harness: None, sla_env: Path, slack: SlackStandIn
) -> None:
    """Level 1's channel archived, no email fallback: level 2 (its own channel) is told at its
    delay from the start, and that run still ends Failed naming level 1's notice."""
    from flows.evaluate_slos import evaluate_slos

    sla_env.write_text(
        DEFINITIONS.replace("    email_fallback: [oncall@example.test]\n", "").replace(
            'channel: "#oncall", mentions: [U0MGR]', 'channel: "#eng-manager", mentions: [U0MGR]'
        )
    )
    slack.set_archived("#oncall", True)
    first = evaluate_slos(definitions_path=str(sla_env), at=_at(3), return_state=True)
    assert first.is_failed()
    state = evaluate_slos(definitions_path=str(sla_env), at=_at(18), return_state=True)
    assert state.is_failed() and state.message is not None
    fire_key = "default:slo=availability@" + str(int(_at(3).timestamp())) + ":fire:1"
    assert f"notices not sent: {fire_key}: Slack channel #oncall not found" in state.message
    rows = artifact_rows("perfops-sla")  # written before the run ended
    escalated = [r for r in rows if r["kind"] == "notice escalate"]
    assert [r["result"] for r in escalated] == ["sent", "sent"]  # availability, error-rate
    assert all("said level 1 (#oncall) could not be reached" in str(r["reason"]) for r in escalated)
    assert [m["channel"] for m in slack.messages] == [slack.channel_id("#eng-manager")] * 2
    assert all("level 1 (team lead) could not be reached" in m["text"] for m in slack.messages)


def test_prometheus_answering_503_after_retries_is_a_blind_run_that_fails(
    prefect_harness: None, sla_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.evaluate_slos import evaluate_slos

    with UnhealthyProxy(503) as proxy:  # Prometheus down behind its proxy
        monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", proxy.url)
        state = evaluate_slos(definitions_path=str(sla_env), notify=False, return_state=True)
    assert state.is_failed()
    assert state.message is not None
    assert state.message.startswith(f"no SLO or rule could be evaluated: {UNREACHABLE} at")
    assert "HTTP Status Code 503" in state.message
    rows = artifact_rows("perfops-sla")  # every item recorded as no data, why
    items = [r for r in rows if r["kind"] in ("slo", "rule", "degradation")]
    assert items and {r["result"] for r in items} == {"no data"}
    assert all(str(r["reason"]).startswith(UNREACHABLE) for r in items)


def test_a_run_that_cannot_take_the_sla_lock_records_its_evaluation_then_fails(
    prefect_harness: None,
    sla_env: Path,
    slack: SlackStandIn,
    redis_target: RedisTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to end with LockBusy raised from its delivery task: no artifact, no
    perfops.sla.evaluated, though every SLO had been evaluated."""
    from flows.evaluate_slos import evaluate_slos
    from tasks import sla_delivery

    monkeypatch.setattr(sla_delivery, "LOCK_WAIT_S", 0.5)
    held = redis_target.get_client().lock(f"{redis_target.key_prefix}sla:lock", timeout=120)
    assert held.acquire(blocking=False)  # another evaluation, slow on Slack, holds it
    try:
        state = evaluate_slos(definitions_path=str(sla_env), at=_at(3), return_state=True)
    finally:
        held.release()
    assert state.is_failed() and state.message is not None
    assert state.message.startswith("another SLA evaluation holds perfops:sla:lock for more than")
    rows = artifact_rows("perfops-sla")
    assert [(r["item"], r["result"]) for r in rows if r["kind"] == "delivery"] == [
        ("notices", "not decided")
    ]
    assert {r["item"]: r["result"] for r in rows}["availability"] == "firing"
    evaluated = wait_for_events(
        "perfops.sla.evaluated", flow_run_id=state.state_details.flow_run_id
    )
    assert evaluated[0].payload["at"] == _at(3).isoformat()
    assert slack.messages == []


def test_an_acknowledgement_that_cannot_take_the_lock_or_reach_redis_says_so_and_fails(
    prefect_harness: None,
    sla_env: Path,
    slack: SlackStandIn,
    redis_target: RedisTarget,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to end with the bare LockBusy / Redis error and no artifact."""
    from flows.acknowledge_alert import acknowledge_alert
    from flows.evaluate_slos import evaluate_slos
    from tasks import sla_delivery

    evaluate_slos(definitions_path=str(sla_env), at=_at(3))
    monkeypatch.setattr(sla_delivery, "LOCK_WAIT_S", 0.5)
    held = redis_target.get_client().lock(f"{redis_target.key_prefix}sla:lock", timeout=120)
    assert held.acquire(blocking=False)  # an evaluation, slow on Slack, holds it
    try:
        state = acknowledge_alert(
            alert="error-rate-critical/threshold",
            definitions_path=str(sla_env),
            return_state=True,
        )
    finally:
        held.release()
    assert state.is_failed() and state.message is not None
    assert state.message.endswith(
        "an SLA evaluation holds the SLA lock; nothing was acknowledged: run it again"
    )
    [row] = artifact_rows("perfops-sla-ack")
    assert row["result"] == "not acknowledged" and row["reason"] in state.message
    posted = len(slack.messages)
    monkeypatch.setenv("PERFOPS_REDIS_URL", "redis://127.0.0.1:9/4")  # nothing listens there
    state = acknowledge_alert(
        alert="error-rate-critical/threshold", definitions_path=str(sla_env), return_state=True
    )
    assert state.is_failed() and "Redis at redis://127.0.0.1:9/4 failed" in str(state.message)
    [row] = artifact_rows("perfops-sla-ack")
    assert row["result"] == "not acknowledged"
    assert len(slack.messages) == posted  # no reply says it was acknowledged


def test_a_run_without_redis_records_its_evaluation_then_fails_saying_so(
    prefect_harness: None, sla_env: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to crash in read_no_data_clocks with the client's bare ConnectionError ('Error
    111 connecting to ...'): no artifact, no perfops.sla.evaluated."""
    from flows.evaluate_slos import evaluate_slos

    monkeypatch.setenv("PERFOPS_REDIS_URL", "redis://127.0.0.1:9/4")  # nothing listens there
    state = evaluate_slos(definitions_path=str(sla_env), at=_at(3), return_state=True)
    assert state.is_failed() and state.message is not None
    assert state.message.startswith(
        "nothing decided or sent: Redis at redis://127.0.0.1:9/4 failed: Error 111 connecting"
    )
    assert state.message.endswith(
        "(the incidents, the notice log and the lock are there); the next run catches up"
    )
    rows = artifact_rows("perfops-sla")
    assert [(r["item"], r["result"]) for r in rows if r["kind"] == "delivery"] == [
        ("notices", "not decided")
    ]
    assert {r["item"]: r["result"] for r in rows}["availability"] == "firing"
    assert wait_for_events("perfops.sla.evaluated", flow_run_id=state.state_details.flow_run_id)
    assert slack.messages == []


def test_prometheus_down_under_an_open_incident_sends_no_resolved_notice(
    prefect_harness: None, sla_env: Path, slack: SlackStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a blind run (Prometheus unreachable: no alert could be evaluated) resolved
    every open incident, a false 'RESOLVED' in each thread mid-outage. What could not be
    evaluated keeps firing as it was; the incidents resolve when data says so."""
    from flows.evaluate_slos import evaluate_slos

    report = evaluate_slos(definitions_path=str(sla_env), at=_at(3))
    assert report.delivery is not None
    assert [d.kind for d in report.delivery.delivered] == ["fire", "fire"]
    sent = len(slack.messages)
    with UnhealthyProxy(503) as proxy:  # Prometheus down behind its proxy
        monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", proxy.url)
        state = evaluate_slos(definitions_path=str(sla_env), at=_at(4), return_state=True)
    assert state.is_failed()  # blind: still Failed
    assert len(slack.messages) == sent  # nothing resolved (nor updated)
    assert not any("RESOLVED" in m["text"] for m in slack.messages)
    rows = artifact_rows("perfops-sla")
    assert not [r for r in rows if r["kind"] == "notice resolved"]
