"""An SLA run's report, without Prometheus, Redis or Slack: the run fails naming the first notice
not sent, a notice already sent emits no second event, and the artifact leads with what each row
is about."""

from __future__ import annotations

from datetime import UTC, datetime

from decisions.burn_rate import Alert, SloStatus
from decisions.escalation import Suppressed
from decisions.sla_report import Delivered, DeliveryReport, SlaRunReport, artifact_rows, sla_events

AT = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


def _alert() -> Alert:
    return Alert(
        key="api-availability/page-fast",
        name="api-availability",
        condition="page-fast",
        kind="slo",
        slo="api-availability",
        severity="page",
        labels={},
        value=0.9,
        objective=0.999,
        reason="burning 14.4x over 1h and 5m",
    )


def _notice(outcome: str, *, kind: str = "fire", ts: str | None = None) -> Delivered:
    return Delivered(
        key=f"inc-1/{kind}/{outcome}",
        incident="inc-1",
        group="api",
        kind=kind,
        level=1,
        channel="#oncall",
        channel_id="C01",
        sink="slack",
        ts=ts,
        outcome=outcome,
        note="" if outcome != "failed" else "channel_not_found",
        alerts=[_alert()],
    )


def _report(*delivered: Delivered, deferred: bool = False) -> SlaRunReport:
    status = SloStatus(
        name="api-availability",
        kind="slo",
        objective=0.999,
        window="30d",
        sli=0.9985,
        budget_remaining=0.25,
        burn_rates={"1h": 14.4, "5m": None},
        status="firing",
        detail="page-fast",
    )
    delivery = DeliveryReport(
        delivered=list(delivered),
        suppressed=[Suppressed(alert="x/ticket", why="silenced until 05:00")],
        recovered="rebuilt from Slack" if deferred else "",
        deferred=deferred,
    )
    return SlaRunReport(
        at=AT,
        statuses=[status],
        alerts=[_alert()],
        delivery=delivery,
        queries=3,
        seconds=0.5,
        metrics="prometheus http://127.0.0.1:9090",
        slack="files in out/slack",
    )


def test_a_run_whose_notices_all_went_out_has_no_failure() -> None:
    report = _report(_notice("sent", ts="1.0"), _notice("already sent", ts="0.5"))
    assert report.failure is None
    assert report.unsent == []
    assert report.summary.endswith("1 alerts firing, 0 without data; 2 notices")


def test_one_notice_not_sent_fails_the_run_naming_it_and_is_partial() -> None:
    report = _report(_notice("sent", ts="1.0"), _notice("failed"))
    assert report.failure == "1 of 2 notices not sent: inc-1/fire/failed: channel_not_found"
    assert report.partial
    assert not _report(_notice("failed")).partial


def test_a_level_not_reached_is_the_notice_the_failure_names() -> None:
    """A join (or update) of the incident failed too, earlier in the run: the message names
    the level that could not be reached, what most needs fixing."""
    report = _report(_notice("failed", kind="join"), _notice("failed", kind="fire"))
    assert report.failure == "2 of 2 notices not sent: inc-1/fire/failed: channel_not_found"


def test_a_deferred_run_fails_with_what_the_rebuild_found() -> None:
    assert _report(deferred=True).failure == "rebuilt from Slack"


def test_no_delivery_no_failure_and_no_notice_events() -> None:
    report = _report().model_copy(update={"delivery": None})
    assert (report.failure, report.partial) == (None, False)
    events = sla_events(report)
    assert [e[0] for e in events] == ["perfops.sla.evaluated"]
    assert events[0][2]["notices"] == 0


def _no_data(name: str, detail: str) -> SloStatus:
    return SloStatus(name=name, kind="slo", objective=0.999, window="30d", status="no data",
                     detail=detail)  # fmt: skip


def test_a_run_that_could_not_reach_prometheus_for_any_item_is_blind_and_fails() -> None:
    down = "cannot reach Prometheus at http://127.0.0.1:9: ConnectionError: refused"
    blind = _report(_notice("sent", ts="1.0")).model_copy(
        update={"statuses": [_no_data("api-availability", down), _no_data("latency", down)]}
    )
    assert blind.failure == f"no SLO or rule could be evaluated: {down}"
    assert not blind.partial  # every notice went out: allow_partial does not turn it Completed
    # an empty answer or a rejected query is that item's "no data", not a blind run
    empty = blind.model_copy(
        update={"statuses": [_no_data("a", "no samples in any window"), _no_data("b", down)]}
    )
    assert empty.failure is None
    seen = blind.model_copy(update={"statuses": [_report().statuses[0], _no_data("b", down)]})
    assert seen.failure is None


def test_a_notice_already_sent_emits_no_second_event() -> None:
    report = _report(_notice("sent", ts="1.0"), _notice("already sent", ts="0.5"))
    events = sla_events(report)
    assert [(name, resource) for name, resource, _, _ in events] == [
        ("perfops.sla.breached", "perfops.sla.slo.api-availability"),
        ("perfops.sla.evaluated", "perfops.sla"),
    ]
    assert events[0][2]["incident"] == "inc-1"
    assert events[0][3]["perfops.alert"] == "api-availability/page-fast"
    assert events[1][2]["alerts"] == ["api-availability/page-fast"]


def test_the_artifact_lists_slos_then_notices_then_what_was_muted() -> None:
    rows = artifact_rows(_report(_notice("sent", ts="1.0")))
    assert [(r["item"], r["result"]) for r in rows] == [
        ("api-availability", "firing"),
        ("inc-1/fire/sent", "sent"),
        ("x/ticket", "muted"),
    ]
    assert list(rows[0])[:3] == ["item", "result", "reason"]
    assert rows[0]["burn rates"] == "1h 14.40x"
    assert rows[1]["detail"] == "slack #oncall (C01) ts=1.0"


def test_a_run_that_lost_the_sla_lock_fails_saying_so() -> None:
    report = _report(_notice("sent", ts="1.0"))
    assert report.delivery is not None
    report.delivery.lock_lost = "the SLA lock perfops:sla:lock expired (held over 120 s ...)"
    assert report.failure == report.delivery.lock_lost  # every notice went out, the rest not
    failed = _report(_notice("sent", ts="1.0"), _notice("failed"))
    assert failed.delivery is not None
    failed.delivery.lock_lost = "expired"
    assert failed.failure is not None and failed.failure.startswith("1 of 2 notices not sent")


def test_policy_warnings_are_artifact_rows() -> None:
    report = _report(_notice("sent", ts="1.0"))
    assert report.delivery is not None
    report.delivery.warnings = ["incident g@1: reached level 3, policy 'default' now has 2"]
    [row] = [r for r in artifact_rows(report) if r["result"] == "warning"]
    assert row["reason"] == report.delivery.warnings[0] and row["kind"] == "definitions"
