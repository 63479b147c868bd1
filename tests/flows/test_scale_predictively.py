"""scale_predictively on the CSV trace, Prometheus, a moto Auto Scaling group and real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from blocks import RedisTarget
from decisions.fleet import FleetReport
from decisions.scaling_policy import ScalingPolicy, Schedule, ScheduleWindow
from decisions.scaling_report import LoadQuery
from flows.scale_predictively import scale_predictively
from perfops.errors import ConfigurationError, ConnectionFailed
from tasks.autoscaling import AutoScalingTarget
from tasks.scaling_state import group_lock, load_state, read_history, save_tuning
from tests.conftest import HISTORY_END, REDIS_TEST_URL, load_value
from tests.records import artifact_rows, failed_run, one_target, wait_for_event
from tests.servers import MotoServer, PrometheusServer

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, redis_target: RedisTarget) -> Iterator[RedisTarget]:
    monkeypatch.setenv("PERFOPS_REDIS_URL", REDIS_TEST_URL)
    yield redis_target


@pytest.fixture()
def group(moto_server: MotoServer) -> Iterator[tuple[Any, AutoScalingTarget]]:
    moto_server.reset()
    client = boto3.client("autoscaling", **moto_server.client_kwargs())
    client.create_launch_configuration(
        LaunchConfigurationName="web-lc", ImageId="ami-12345678", InstanceType="t3.micro"
    )
    client.create_auto_scaling_group(
        AutoScalingGroupName="web",
        LaunchConfigurationName="web-lc",
        MinSize=2,
        MaxSize=40,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
    )
    yield client, AutoScalingTarget(group="web", endpoint_url=moto_server.endpoint_url)


def _run(flow_call: Any) -> tuple[Any, str]:
    """Run a flow (given as a zero-argument call) and return its result and flow-run id."""
    state = flow_call()
    return state.result(), str(state.state_details.flow_run_id)


def test_csv_trace_dry_run_records_and_changes_nothing(env: RedisTarget) -> None:
    run, run_id = _run(
        lambda: scale_predictively(group="demo", current_capacity=3, return_state=True)
    )
    assert run.dry_run and not run.applied and run.action == "scale_out"
    assert run.desired > 3 and run.forecast_peak is not None and len(run.forecast) == 2
    assert run.chart is not None and Path(run.chart).stat().st_size > 1000
    [record] = read_history(env, "demo")
    assert record["desired"] == run.desired and record["dry_run"] is True
    event = wait_for_event("perfops.scaling.decided", flow_run_id=run_id)
    for key in ("group", "mode", "current", "desired", "reason", "load", "forecast_peak"):
        assert key in event.payload
    assert event.payload["dry_run"] is True


def test_a_simulated_group_is_at_the_capacity_its_last_run_left(env: RedisTarget) -> None:
    """Without `current_capacity`, a simulated group's capacity is what the last run set (or,
    in a dry run, kept): it was the last recommendation, before max_step, so the group seemed
    at 77 after a step from 3 to 8, and 'no change' followed."""
    policy = ScalingPolicy(capacity_per_instance=500.0, max_step=5, max_capacity=100)
    first = one_target(
        scale_predictively, group="sim", policy=policy, dry_run=False, current_capacity=3
    )
    assert first.applied and (first.current, first.desired) == (3, 8)
    second = one_target(scale_predictively, group="sim", policy=policy, dry_run=False)
    assert second.applied and (second.current, second.desired) == (8, 13)
    preview = one_target(scale_predictively, group="sim", policy=policy)
    assert not preview.applied and (preview.current, preview.desired) == (13, 18)
    after_preview = one_target(scale_predictively, group="sim", policy=policy)
    assert after_preview.current == 13  # a dry run changed nothing


def test_applies_to_the_group_and_rerun_does_not_double_scale(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    client, target = group
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)
    run, run_id = _run(
        lambda: scale_predictively(
            group="web", aws=target, dry_run=False, policy=policy, return_state=True
        )
    )
    assert run.applied and run.current == 2 and run.desired > 2
    desired = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ][0]["DesiredCapacity"]
    assert desired == run.desired
    again = one_target(scale_predictively, group="web", aws=target, dry_run=False, policy=policy)
    assert again.current == run.desired and not again.applied and again.desired == run.desired
    applied = wait_for_event("perfops.scaling.applied", flow_run_id=run_id)
    assert applied.payload["to"] == run.desired and applied.payload["group"] == "web"


def test_forecast_only_and_max_bound(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    _client, target = group
    only = one_target(
        scale_predictively, group="web", aws=target, dry_run=False, mode="forecast_only"
    )
    assert not only.applied and only.forecast_peak is not None
    capped = one_target(
        scale_predictively,
        group="web",
        aws=target,
        dry_run=False,
        policy=ScalingPolicy(capacity_per_instance=1.0, max_capacity=7),
    )
    assert capped.desired == 7 and "capped at the maximum 7" in capped.reason


def test_missing_group_fails_with_a_clear_error(env: RedisTarget, moto_server: MotoServer) -> None:
    target = AutoScalingTarget(group="nope", endpoint_url=moto_server.endpoint_url)
    with pytest.raises(ConfigurationError, match="'nope' does not exist"):
        scale_predictively(group="nope", aws=target, dry_run=False)


def test_a_group_changed_between_read_and_write_is_left_alone_and_the_run_fails(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision scales in 30 -> 27 (max_step 3); an operator sets the group to 10 while it
    forecasts. Setting 27 then would be a scale-out of 17 recorded as a scale-in of 3."""
    import flows.scale_predictively as module

    client, target = group
    client.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=30)
    read = module.describe_group

    def read_then_operator(c: Any, name: str) -> Any:
        found = read(c, name)
        client.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=10)
        return found

    monkeypatch.setattr(module, "describe_group", read_then_operator)
    policy = ScalingPolicy(capacity_per_instance=1e9, max_step=3, max_capacity=40)
    state = scale_predictively(
        group="web", aws=target, dry_run=False, policy=policy, return_state=True
    )
    run, message = failed_run(state)
    assert run.action == "scale_in" and (run.current, run.desired) == (30, 27)
    assert not run.applied and "not the 30 this decision started from" in run.reason
    assert message.startswith("capacity of web not set to 27: group 'web' is at desired ")
    [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ]
    assert found["DesiredCapacity"] == 10
    [row] = [r for r in artifact_rows("perfops-scaling-decision") if r["kind"] == "decision"]
    assert "not set:" in row["reason"]
    [record] = read_history(env, "web")
    assert record["applied"] is False
    assert load_state.fn(env, "web").last_action_at is None  # no cooldown: nothing was done
    run_id = str(state.state_details.flow_run_id)
    decided = wait_for_event("perfops.scaling.decided", flow_run_id=run_id)
    assert "not set:" in decided.payload["reason"]


def test_decisions_are_held_to_the_groups_own_bounds_a_schedule_moved(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    """apply_scaling_schedule raises the group's MinSize to 4 in business hours (and its
    off-hours MaxSize may sit under the policy's maximum): a decision past them was refused,
    run after run, and the group never moved; it is held to the group's bounds instead."""
    client, target = group
    client.update_auto_scaling_group(AutoScalingGroupName="web", MinSize=4, DesiredCapacity=6)
    quiet = ScalingPolicy(capacity_per_instance=1e9, max_capacity=40)  # wants the minimum, 2
    run = one_target(scale_predictively, group="web", aws=target, dry_run=False, policy=quiet)
    assert run.applied and (run.current, run.desired, run.action) == (6, 4, "scale_in")
    assert run.reason.endswith("; held to the group's MinSize 4")
    client.update_auto_scaling_group(AutoScalingGroupName="web", MaxSize=8)
    busy = ScalingPolicy(capacity_per_instance=1000.0, max_capacity=40, max_step=40)
    run = one_target(scale_predictively, group="web", aws=target, dry_run=False, policy=busy)
    assert run.applied and (run.current, run.desired, run.action) == (4, 8, "scale_out")
    assert run.reason.endswith("; held to the group's MaxSize 8")
    [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ]
    assert found["DesiredCapacity"] == 8
    again = one_target(scale_predictively, group="web", aws=target, dry_run=False, policy=busy)
    assert not again.applied and again.action == "none" and again.desired == 8


def test_redis_down_no_action(
    monkeypatch: pytest.MonkeyPatch, group: tuple[Any, AutoScalingTarget]
) -> None:
    client, target = group
    monkeypatch.setenv("PERFOPS_REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionFailed, match="no action taken"):
        scale_predictively(group="web", aws=target, dry_run=False)
    groups = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])
    assert groups["AutoScalingGroups"][0]["DesiredCapacity"] == 2


def test_concurrent_run_skips_and_says_why(env: RedisTarget) -> None:
    with group_lock(env, "demo"):
        run = one_target(scale_predictively, group="demo", current_capacity=3)
    assert run.skipped and "another scaling run holds the lock" in run.reason
    with group_lock(env, "web"):  # a real group: no capacity was read, none is claimed
        skipped = one_target(scale_predictively, group="web", aws=AutoScalingTarget(group="web"))
    assert skipped.summary.startswith("web: skipped: another scaling run holds the lock")


def test_prometheus_history(
    monkeypatch: pytest.MonkeyPatch, env: RedisTarget, prometheus: PrometheusServer
) -> None:
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", prometheus.url)
    query = LoadQuery(promql="sum(perfops_test_load)", lookback=timedelta(days=13))
    run = one_target(
        scale_predictively, group="api", query=query, now=HISTORY_END, current_capacity=5
    )
    assert run.action != "fail_static" and run.load == load_value(HISTORY_END.timestamp())
    # No decision on stale or missing data: capacity unchanged, and the run says so by failing.
    stale, message = failed_run(
        scale_predictively(
            group="api",
            query=query,
            now=HISTORY_END + timedelta(hours=3),
            current_capacity=5,
            return_state=True,
        )
    )
    assert stale.action == "fail_static" and "stale" in stale.reason
    assert message == f"no decision for api: {stale.reason}"
    empty = LoadQuery(promql="sum(perfops_missing_metric)", lookback=timedelta(days=1))
    none, message = failed_run(
        scale_predictively(
            group="api", query=empty, now=HISTORY_END, current_capacity=5, return_state=True
        )
    )
    assert none.action == "fail_static" and "no series" in none.reason
    assert message.startswith("no decision for api: ")
    with pytest.raises(ConfigurationError, match="rejected"):
        scale_predictively(group="api", query=LoadQuery(promql="sum("), now=HISTORY_END)


def test_no_decision_on_missing_data_reports_the_groups_own_capacity_not_zero(
    monkeypatch: pytest.MonkeyPatch,
    env: RedisTarget,
    prometheus: PrometheusServer,
    group: tuple[Any, AutoScalingTarget],
) -> None:
    """Prometheus without data (a renamed metric, an exporter down): no decision, and the
    record and the event say the group is at the capacity AWS has, not at 0 (the weekly
    report drew the group's capacity dropping to 0 every 10 minutes of the outage)."""
    client, target = group
    client.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=7)
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", prometheus.url)
    empty = LoadQuery(promql="sum(perfops_missing_metric)", lookback=timedelta(days=1))
    state = scale_predictively(
        group="web", aws=target, query=empty, now=HISTORY_END, dry_run=False, return_state=True
    )
    run, message = failed_run(state)
    assert run.action == "fail_static" and (run.current, run.desired) == (7, 7)
    assert run.summary.startswith("web: keep 7 (from 7): ")
    assert message.startswith("no decision for web: ")
    decided = wait_for_event(
        "perfops.scaling.decided", flow_run_id=str(state.state_details.flow_run_id)
    )
    assert (decided.payload["current"], decided.payload["desired"]) == (7, 7)
    # a simulated group: the capacity its last run left, not 0
    good = LoadQuery(promql="sum(perfops_test_load)", lookback=timedelta(days=13))
    one_target(scale_predictively, group="sim", query=good, now=HISTORY_END, current_capacity=5)
    none, _ = failed_run(
        scale_predictively(group="sim", query=empty, now=HISTORY_END, return_state=True)
    )
    assert (none.current, none.desired) == (5, 5)


def test_apply_scaling_schedule_dry_run_then_idempotent(
    group: tuple[Any, AutoScalingTarget],
) -> None:
    from flows.apply_scaling_schedule import apply_scaling_schedule

    client, target = group
    preview = one_target(apply_scaling_schedule, aws=target)
    assert preview.dry_run and len(preview.changed) == 2
    assert (
        client.describe_scheduled_actions(AutoScalingGroupName="web")["ScheduledUpdateGroupActions"]
        == []
    )
    applied, run_id = _run(
        lambda: apply_scaling_schedule(aws=target, dry_run=False, return_state=True)
    )
    assert applied.changed == ["perfops-business-hours-start", "perfops-business-hours-end"]
    again = one_target(apply_scaling_schedule, aws=target, dry_run=False)
    assert again.changed == [] and "already in place" in again.summary
    rows = artifact_rows("perfops-scaling-schedule")
    assert [(r["name"], r["result"], r["reason"]) for r in rows] == [
        (name, "unchanged", "already on the group")
        for name in ("perfops-business-hours-start", "perfops-business-hours-end")
    ]
    assert all(list(r)[:3] == ["name", "result", "reason"] for r in rows)
    event = wait_for_event("perfops.scaling.scheduled", flow_run_id=run_id)
    assert event.payload["group"] == "web"


def test_apply_scaling_schedule_after_aws_renamed_the_zone_changes_nothing(
    group: tuple[Any, AutoScalingTarget],
) -> None:
    """AWS may give the TimeZone back as an alias (`Etc/UTC` for the `UTC` written): the
    second apply compared the names and rewrote both actions, reporting changes every run."""
    from flows.apply_scaling_schedule import apply_scaling_schedule

    client, target = group
    schedule = Schedule(timezone="UTC")
    first = one_target(apply_scaling_schedule, aws=target, schedule=schedule, dry_run=False)
    assert len(first.changed) == 2
    for a in client.describe_scheduled_actions(AutoScalingGroupName="web")[
        "ScheduledUpdateGroupActions"
    ]:  # as AWS may store it: the same zone, another name
        client.put_scheduled_update_group_action(
            AutoScalingGroupName="web",
            ScheduledActionName=a["ScheduledActionName"],
            Recurrence=a["Recurrence"],
            MinSize=a["MinSize"],
            MaxSize=a["MaxSize"],
            TimeZone="Etc/UTC",
        )
    for spelling in ("UTC", "Etc/UTC", "Zulu"):
        again = one_target(
            apply_scaling_schedule,
            aws=target,
            schedule=Schedule(timezone=spelling),
            dry_run=False,
        )
        assert again.changed == [] and "already in place" in again.summary, spelling
        rows = artifact_rows("perfops-scaling-schedule")
        assert [r["result"] for r in rows] == ["unchanged", "unchanged"]
    described = client.describe_scheduled_actions(AutoScalingGroupName="web")
    assert {a["TimeZone"] for a in described["ScheduledUpdateGroupActions"]} == {"Etc/UTC"}


def test_apply_scaling_schedule_refuses_a_bad_time_zone_before_any_aws_call(
    group: tuple[Any, AutoScalingTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the API the schedule arrives as data: its zone is checked as a parameter, so the
    run fails saying why before a client is made."""
    import flows.apply_scaling_schedule as module

    def no_client(*_: object, **__: object) -> None:
        raise AssertionError("an AWS client was made for a bad time zone")

    monkeypatch.setattr(module, "client_for", no_client)
    client, target = group
    for zone in ("Europe/Berln", "localtime", ""):
        state = module.apply_scaling_schedule(
            aws=target, schedule={"timezone": zone}, dry_run=False, return_state=True
        )
        assert state.is_failed(), zone
        assert "give an IANA name" in str(state.message) or "IANA time zone" in str(
            state.message
        ), state.message
    assert (
        client.describe_scheduled_actions(AutoScalingGroupName="web")["ScheduledUpdateGroupActions"]
        == []
    )


def test_apply_scaling_schedule_says_where_it_loosens_a_groups_own_bounds(
    group: tuple[Any, AutoScalingTarget],
) -> None:
    """A group of its own floor 6 and ceiling 10: the default schedule (business 4..100,
    off hours 2..100) takes its MinSize down to 2 at 17:00 (and scale_predictively, held to
    the group's bounds, may then scale in below 6) and its MaxSize up to 100. The dry run said
    only 'would write 2 of 2 scheduled actions'."""
    from flows.apply_scaling_schedule import apply_scaling_schedule

    client, target = group
    client.update_auto_scaling_group(
        AutoScalingGroupName="web", MinSize=6, MaxSize=10, DesiredCapacity=6
    )
    loosened = (
        "the group's own bounds [6, 10]: it lowers its MinSize 6 to 2 (off-hours) and raises "
        "its MaxSize 10 to 100 (business-hours)"
    )
    preview, run_id = _run(lambda: apply_scaling_schedule(aws=target, return_state=True))
    assert preview.summary == (
        f"web: would write 2 of 2 scheduled actions; the schedule would loosen {loosened}"
    )
    event = wait_for_event("perfops.scaling.scheduled", flow_run_id=run_id)
    assert event.payload["loosened"] == [
        "lowers its MinSize 6 to 2 (off-hours)",
        "raises its MaxSize 10 to 100 (business-hours)",
    ]
    applied = one_target(apply_scaling_schedule, aws=target, dry_run=False)
    assert applied.summary.endswith(f"; the schedule loosened {loosened}")
    # perfops' actions manage the bounds now: a new schedule is not compared with them
    wider = Schedule(off_hours_min=1)
    again = one_target(apply_scaling_schedule, aws=target, schedule=wider, dry_run=False)
    assert again.loosened == [] and again.summary == "web: wrote 1 of 2 scheduled actions"


def test_apply_scaling_schedule_rewrites_actions_that_set_the_desired_capacity(
    group: tuple[Any, AutoScalingTarget],
) -> None:
    """Actions an older perfops wrote with DesiredCapacity (the group forced to the off-hours
    minimum at 17:00, whatever its load) are changes: rewritten with min/max only."""
    from flows.apply_scaling_schedule import apply_scaling_schedule

    client, target = group
    for name, cron, low in (
        ("perfops-business-hours-start", "0 9 * * MON,TUE,WED,THU,FRI", 4),
        ("perfops-business-hours-end", "0 17 * * MON,TUE,WED,THU,FRI", 2),
    ):
        client.put_scheduled_update_group_action(
            AutoScalingGroupName="web",
            ScheduledActionName=name,
            Recurrence=cron,
            MinSize=low,
            MaxSize=100,
            DesiredCapacity=low,
            TimeZone="UTC",
        )
    preview = one_target(apply_scaling_schedule, aws=target)
    assert len(preview.changed) == 2
    rows = artifact_rows("perfops-scaling-schedule")
    assert [(r["result"], r["reason"]) for r in rows] == [
        (
            "would write",
            f"sets desired capacity {low} when it runs, overriding the scaling "
            "decisions: rewritten with bounds only",
        )
        for low in (4, 2)
    ]
    assert all("desired" not in r for r in rows)  # the actions written carry none
    applied = one_target(apply_scaling_schedule, aws=target, dry_run=False)
    assert applied.changed == ["perfops-business-hours-start", "perfops-business-hours-end"]
    described = client.describe_scheduled_actions(AutoScalingGroupName="web")
    assert [
        (a["MinSize"], a["MaxSize"], a.get("DesiredCapacity"))
        for a in described["ScheduledUpdateGroupActions"]
    ] == [(4, 100, None), (2, 100, None)]
    again = one_target(apply_scaling_schedule, aws=target, dry_run=False)
    assert again.changed == [] and "already in place" in again.summary


def test_apply_scaling_schedule_deletes_the_actions_of_a_window_no_longer_in_the_schedule(
    group: tuple[Any, AutoScalingTarget],
) -> None:
    """A window removed from (or renamed in) the schedule must not keep setting the group's
    bounds: its perfops-<name>-start/-end actions go; actions perfops did not name stay."""
    from flows.apply_scaling_schedule import apply_scaling_schedule

    client, target = group
    weekend = ScheduleWindow(name="saturday", days=(5,), min_capacity=10, max_capacity=40)
    both = Schedule(windows=(ScheduleWindow(min_capacity=4, max_capacity=40), weekend))
    one_target(apply_scaling_schedule, aws=target, schedule=both, dry_run=False)
    client.put_scheduled_update_group_action(
        AutoScalingGroupName="web", ScheduledActionName="ops-manual", Recurrence="0 3 * * *"
    )

    def names() -> list[str]:
        found = client.describe_scheduled_actions(AutoScalingGroupName="web")
        return sorted(a["ScheduledActionName"] for a in found["ScheduledUpdateGroupActions"])

    weekdays = Schedule(windows=(ScheduleWindow(min_capacity=4, max_capacity=40),))
    preview = one_target(apply_scaling_schedule, aws=target, schedule=weekdays)
    assert preview.deleted == ["perfops-saturday-end", "perfops-saturday-start"]
    assert "would delete 2" in preview.summary and len(names()) == 5
    rows = artifact_rows("perfops-scaling-schedule")
    assert [(r["name"], r["result"]) for r in rows][2:] == [
        ("perfops-saturday-end", "would delete"),
        ("perfops-saturday-start", "would delete"),
    ]
    assert "not in the schedule" in rows[2]["reason"]
    applied = one_target(apply_scaling_schedule, aws=target, schedule=weekdays, dry_run=False)
    assert applied.deleted == ["perfops-saturday-end", "perfops-saturday-start"]
    assert names() == [
        "ops-manual",
        "perfops-business-hours-end",
        "perfops-business-hours-start",
    ]
    again = one_target(apply_scaling_schedule, aws=target, schedule=weekdays, dry_run=False)
    assert again.changed == [] and again.deleted == [] and "already in place" in again.summary


def test_a_fleet_scales_each_of_its_groups_and_leaves_databases_out(
    env: RedisTarget,
    group: tuple[Any, AutoScalingTarget],
    moto_server: MotoServer,
    tmp_path: Path,
    perfops: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Targets with `autoscaling` each get a child run on their own group; a database target of
    the same selection is not one of them."""
    client, _ = group
    client.create_auto_scaling_group(
        AutoScalingGroupName="api",
        LaunchConfigurationName="web-lc",
        MinSize=2,
        MaxSize=40,
        DesiredCapacity=3,
        AvailabilityZones=["us-east-1a"],
    )
    fleet = tmp_path / "fleet.yaml"
    endpoint = moto_server.endpoint_url
    fleet.write_text(
        "targets:\n"
        f"  - {{name: web, autoscaling: {{group: web, endpoint_url: '{endpoint}'}}}}\n"
        f"  - {{name: api, autoscaling: {{group: api, endpoint_url: '{endpoint}'}}}}\n"
        "  - {name: orders, blocks: {postgres: perfops-postgres-orders}}\n",
        encoding="utf-8",
    )
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)
    report = scale_predictively(targets="all", fleet_file=str(fleet), dry_run=False, policy=policy)
    assert isinstance(report, FleetReport)
    assert [(t.target, t.result) for t in report.targets] == [("web", "done"), ("api", "done")]
    for name in ("web", "api"):
        [asg] = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"
        ]
        assert asg["DesiredCapacity"] > 3  # scaled out by its own child run
        # the child's own artifact says so
        rows = artifact_rows(f"perfops-scaling-decision-{name}")
        assert any(f"(from {2 if name == 'web' else 3})" in str(r["result"]) for r in rows), rows
    assert [r["target"] for r in artifact_rows("perfops-scaling-fleet")] == ["web", "api"]
    # `perfops fleet list` probes a group target by describing its group
    capsys.readouterr()
    assert perfops(["fleet", "list", "--fleet-file", str(fleet), "--fleet", "api", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["targets"]
    assert listed["reachable"] is True and "Auto Scaling group api" in listed["detail"]
    # the schedule over the same fleet: one child per group, the database left out
    from flows.apply_scaling_schedule import apply_scaling_schedule

    scheduled = apply_scaling_schedule(targets="all", fleet_file=str(fleet), dry_run=False)
    assert isinstance(scheduled, FleetReport)
    assert [(t.target, t.result, t.changed.split("; ")[0]) for t in scheduled.targets] == [
        (name, "done", f"{name}: wrote 2 of 2 scheduled actions") for name in ("web", "api")
    ]
    # the shared schedule's ceiling (100) is over the group's own (40): said
    assert "it raises its MaxSize 40 to 100 (business-hours)" in scheduled.targets[0].changed
    # (moto keys scheduled actions by name alone, not per group as AWS does, so the groups'
    # actions cannot both be read back here: each child's own report says what it wrote)


@pytest.fixture()
def api_in_two_regions(
    monkeypatch: pytest.MonkeyPatch,
    moto_server: MotoServer,
    prometheus: PrometheusServer,
    tmp_path: Path,
) -> tuple[Path, str, str]:
    """A group `api` in eu-west-1 (desired 2) and one in us-east-1 (desired 3), the fleet file
    naming them `api-eu` and `api-us`, and their keys; their load from the test Prometheus."""
    monkeypatch.setenv("PERFOPS_PROMETHEUS_URL", prometheus.url)
    moto_server.reset()
    endpoint = moto_server.endpoint_url
    for region, desired in (("eu-west-1", 2), ("us-east-1", 3)):
        kwargs = moto_server.client_kwargs()
        kwargs["region_name"] = region
        client = boto3.client("autoscaling", **kwargs)
        client.create_launch_configuration(
            LaunchConfigurationName="api-lc", ImageId="ami-12345678", InstanceType="t3.micro"
        )
        client.create_auto_scaling_group(
            AutoScalingGroupName="api",
            LaunchConfigurationName="api-lc",
            MinSize=1,
            MaxSize=40,
            DesiredCapacity=desired,
            AvailabilityZones=[f"{region}a"],
        )
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "targets:\n"
        f"  - {{name: api-eu, autoscaling: {{group: api, region: eu-west-1, "
        f"endpoint_url: '{endpoint}'}}}}\n"
        f"  - {{name: api-us, autoscaling: {{group: api, region: us-east-1, "
        f"endpoint_url: '{endpoint}'}}}}\n",
        encoding="utf-8",
    )
    where = endpoint.removeprefix("http://")
    return fleet, f"{where}/eu-west-1/api", f"{where}/us-east-1/api"


# three days at 15 minutes: a small back-test for tune_scaling
QUERY = LoadQuery(
    promql="sum(perfops_test_load)", lookback=timedelta(days=3), step=timedelta(minutes=15)
)


def test_groups_of_one_name_in_two_regions_keep_their_own_lock_state_tuning_and_chart(
    env: RedisTarget,
    api_in_two_regions: tuple[Path, str, str],
    perfops: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`api` in eu-west-1 and in us-east-1: each fleet child decides under its own key (no
    shared lock: neither is skipped), keeps its own history and chart, and runs the tuning
    tune_scaling stored under its key only."""
    from flows.tune_scaling import tune_scaling
    from perfops.settings import get_settings

    fleet, eu, us = api_in_two_regions
    where = eu.removesuffix("/eu-west-1/api")
    tuned = one_target(tune_scaling, group=eu, query=QUERY, now=HISTORY_END)
    assert tuned.stored
    # another run deciding for the us group holds its lock: the eu group is not held up by it
    with group_lock(env, us):
        report = scale_predictively(
            targets="all", fleet_file=str(fleet), query=QUERY, now=HISTORY_END
        )
    assert isinstance(report, FleetReport)
    assert [t.target for t in report.targets] == ["api-eu", "api-us"]
    eu_rows = artifact_rows("perfops-scaling-decision-api-eu")
    assert not any("holds the lock" in str(r["reason"]) for r in eu_rows), eu_rows
    assert any(str(r["reason"]).startswith("tuned ") for r in eu_rows), eu_rows
    # the us group decides on its own now that its lock is free, untouched by the eu tuning
    report = scale_predictively(targets="all", fleet_file=str(fleet), query=QUERY, now=HISTORY_END)
    us_rows = artifact_rows("perfops-scaling-decision-api-us")
    assert any("not tuned" in str(r["reason"]) for r in us_rows), us_rows
    assert [(r["group"], r["current"]) for r in read_history(env, eu)] == [(eu, 2), (eu, 2)]
    assert [(r["group"], r["current"]) for r in read_history(env, us)] == [(us, 3)]
    assert read_history(env, "api") == []
    charts = get_settings().out_dir / "scaling"
    assert (charts / where.replace(":", "_") / "eu-west-1" / "api.png").is_file()
    assert (charts / where.replace(":", "_") / "us-east-1" / "api.png").is_file()
    # `perfops scaling history` takes the key; `perfops fleet list` shows it
    capsys.readouterr()
    assert perfops(["scaling", "history", "--group", us, "--json"]) == 0
    assert [r["current"] for r in json.loads(capsys.readouterr().out)] == [3]
    assert perfops(["fleet", "list", "--fleet-file", str(fleet), "--no-probe", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["targets"]
    assert [t["autoscaling"]["key"] for t in listed] == [eu, us]


def test_a_fleet_tuning_is_stored_under_each_groups_key_and_its_decisions_run_it(
    env: RedisTarget,
    api_in_two_regions: tuple[Path, str, str],
    perfops: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """tune_scaling over the fleet: one child per group, each tuning under the key
    scale_predictively's child for that target uses, so each decision runs its own group's
    tuning; a summary artifact and event; a child that cannot tune fails the parent."""
    from flows.tune_scaling import tune_scaling
    from tasks.scaling_state import load_tuning

    fleet, eu, us = api_in_two_regions
    state = tune_scaling(
        targets="all", fleet_file=str(fleet), query=QUERY, now=HISTORY_END, return_state=True
    )
    report = state.result()
    assert isinstance(report, FleetReport)
    assert [(t.target, t.result) for t in report.targets] == [
        ("api-eu", "done"),
        ("api-us", "done"),
    ]
    stored = {key: load_tuning.fn(env, key) for key in (eu, us)}
    assert all(stored.values()), stored
    assert load_tuning.fn(env, "api") is None and load_tuning.fn(env, "demo") is None
    assert [r["target"] for r in artifact_rows("perfops-scaling-tuning-fleet")] == [
        "api-eu",
        "api-us",
    ]
    labels = {key: str((stored[key] or {})["label"]) for key in (eu, us)}
    for child, key in zip(report.targets, (eu, us), strict=True):
        [chosen, *_] = artifact_rows(f"perfops-scaling-tuning-{child.target}")
        assert (chosen["candidate"], chosen["result"]) == (labels[key], "chosen")
        tuned = wait_for_event("perfops.scaling.tuned", flow_run_id=child.flow_run_id)
        assert tuned.resource["perfops.target"] == child.target
        assert tuned.payload["group"] == key and tuned.payload["stored"] is True
    summary = wait_for_event(
        "perfops.scaling.fleet_tuned", flow_run_id=state.state_details.flow_run_id
    )
    assert summary.payload["targets"] == 2 and summary.payload["failed"] == []

    # scale_predictively's children read the tuning stored under their own key
    decided = scale_predictively(targets="all", fleet_file=str(fleet), query=QUERY, now=HISTORY_END)
    assert isinstance(decided, FleetReport)
    for child, key in zip(decided.targets, (eu, us), strict=True):
        rows = artifact_rows(f"perfops-scaling-decision-{child.target}")
        [policy] = [r for r in rows if r["kind"] == "policy"]
        assert policy["result"] == "tuned", policy
        assert str(policy["reason"]).endswith(f": {labels[key]}"), policy
        event = wait_for_event("perfops.scaling.decided", flow_run_id=child.flow_run_id)
        assert event.payload["group"] == key
        assert event.payload["policy"] == policy["reason"]

    # too short a history for one group: its child fails, and so does the parent, saying which
    short = QUERY.model_copy(update={"lookback": timedelta(hours=30)})
    failed, message = failed_run(
        tune_scaling(
            targets="api-us",
            fleet_file=str(fleet),
            query=short,
            now=HISTORY_END,
            return_state=True,
        )
    )
    assert [(t.target, t.result) for t in failed.targets] == [("api-us", "failed")]
    assert message.startswith(f"1 of 1 targets failed: api-us: no tuning for {us}"), message

    # the command line: --fleet runs the same children (here on the default query and now,
    # which the test Prometheus cannot answer: each fails, the command says so and exits 1)
    capsys.readouterr()
    argv = ["scaling", "tune", "--fleet", "all", "--fleet-file", str(fleet), "--no-store"]
    assert perfops(argv) == 1
    out, err = capsys.readouterr()
    assert "scaling tunings over the fleet all" in out and "failed: api-eu" in out
    assert "2 of 2 targets failed" in err and "perfops-scaling-tuning-fleet" in err
    assert perfops([*argv, "--group", eu]) == 2
    assert "drop --group" in capsys.readouterr().err


def test_decide_from_the_command_line_keys_the_group_as_its_fleet_target_does(
    env: RedisTarget,
    group: tuple[Any, AutoScalingTarget],
    perfops: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _client, target = group
    where = (target.endpoint_url or "").removeprefix("http://")
    capsys.readouterr()
    argv = ["scaling", "decide", "--group", "web", "--endpoint-url", str(target.endpoint_url)]
    assert perfops([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["group"] == f"{where}/web"
    assert perfops([*argv, "--region", "us-east-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["group"] == f"{where}/us-east-1/web"
    assert [r["group"] for r in read_history(env, f"{where}/us-east-1/web")] == [
        f"{where}/us-east-1/web"
    ]


def test_current_capacity_with_aws_is_refused_and_nothing_changes(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    """A capacity given for a real group was silently ignored (AWS's was used): refused."""
    client, target = group
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)
    with pytest.raises(ConfigurationError, match="current_capacity=30 is for a simulated group"):
        scale_predictively(
            group="web", aws=target, current_capacity=30, dry_run=False, policy=policy
        )
    [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ]
    assert found["DesiredCapacity"] == 2 and read_history(env, "web") == []


def test_a_key_of_another_group_never_acts_on_the_aws_group(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    """The deployment's trigger runs it with the group an SLA alert names while `aws` stays
    the deployment's: the run scaled `web` under `checkout`'s lock, cooldowns and tuning
    (and recorded it as checkout's). Refused, nothing changed; a key with a region is fine."""
    client, target = group
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)
    with pytest.raises(ConfigurationError, match="'checkout' is not the key of the Auto Scal"):
        scale_predictively(group="checkout", aws=target, dry_run=False, policy=policy)
    [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ]
    assert found["DesiredCapacity"] == 2 and read_history(env, "checkout") == []
    keyed_run = one_target(scale_predictively, group="us-east-1/web", aws=target, policy=policy)
    assert keyed_run.group == "us-east-1/web" and keyed_run.current == 2


def test_a_tuned_simple_choice_and_the_reactive_mode_set_the_capacity(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget]
) -> None:
    """Only mode forecast_and_scale acted: a tuned simple choice runs as mode `reactive`, so
    once tune_scaling stored one (whenever no forecast beats the simple policies) every
    `dry_run=False` run only said `would set` and ended Completed, the group never scaled.
    Every mode but forecast_only acts."""
    client, target = group
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)
    save_tuning.fn(
        env,
        "web",
        {
            "at": "2026-12-07T00:20:00+00:00",
            "candidate": {
                "family": "target_tracking",
                "target": 0.7,
                "quantile": None,
                "margin": "additive",
            },
            "label": "target tracking @ 70%",
            "reason": "no forecast beats the simple policies on this history",
        },
    )

    def desired() -> int:
        [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
            "AutoScalingGroups"
        ]
        return int(found["DesiredCapacity"])

    tuned = one_target(scale_predictively, group="web", aws=target, dry_run=False, policy=policy)
    assert tuned.mode == "reactive" and "tuned 2026-12-07" in tuned.tuned
    assert tuned.applied and tuned.desired > 2 and desired() == tuned.desired
    assert tuned.summary.startswith(f"web: set {tuned.desired} (from 2)")
    client.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=2)
    reactive = one_target(
        scale_predictively,
        group="web",
        aws=target,
        dry_run=False,
        policy=policy,
        mode="reactive",
        use_tuning=False,
    )
    assert reactive.applied and desired() == reactive.desired > 2
    client.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=2)
    only = one_target(
        scale_predictively, group="web", aws=target, dry_run=False, mode="forecast_only"
    )
    assert not only.applied and desired() == 2


def test_reactive_mode_does_not_run_a_tuned_forecast_choice(env: RedisTarget) -> None:
    """An operator's mode=reactive (forecasts off) was switched back to forecast_and_scale by
    a tuned forecast choice: the override ignored, the forecast deciding."""
    save_tuning.fn(
        env,
        "sim",
        {
            "at": "2026-12-07T00:20:00+00:00",
            "candidate": {
                "family": "forecast",
                "target": 1.0,
                "quantile": 0.95,
                "margin": "additive",
            },
            "label": "forecast @ 100% p95",
            "reason": "the forecast beats the simple policies",
        },
    )
    run = one_target(scale_predictively, group="sim", mode="reactive", current_capacity=3)
    assert run.mode == "reactive" and "predictive" not in run.demands
    assert "reactive mode: the tuned forecast @ 100% p95 needs forecasts, not used" in run.tuned
    tuned = one_target(scale_predictively, group="sim", current_capacity=3)
    assert tuned.mode == "forecast_and_scale" and "predictive" in tuned.demands


def test_state_not_saved_after_setting_the_capacity_is_recorded_and_fails(
    env: RedisTarget, group: tuple[Any, AutoScalingTarget], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis failing between the decision and saving its state (a fault the shared Redis
    cannot be made to produce on cue: the save is replaced) raised out of the flow after the
    capacity was set: no artifact, no `applied` event, no record of the change."""
    client, target = group
    policy = ScalingPolicy(capacity_per_instance=2000.0, max_step=100, max_capacity=40)

    def redis_gone(*_: Any, **__: Any) -> None:
        raise ConnectionFailed("Redis at redis://127.0.0.1:6379/5 failed (connection reset)")

    monkeypatch.setattr("flows.scale_predictively.save_state", redis_gone)
    state = scale_predictively(
        group="web", aws=target, dry_run=False, policy=policy, return_state=True
    )
    run, message = failed_run(state)
    [found] = client.describe_auto_scaling_groups(AutoScalingGroupNames=["web"])[
        "AutoScalingGroups"
    ]
    assert run.applied and found["DesiredCapacity"] == run.desired > 2
    assert message.startswith(f"capacity of web set to {run.desired}, but its state not saved")
    assert "state not saved" in run.reason and "cooldown" in run.reason
    applied = wait_for_event(
        "perfops.scaling.applied", flow_run_id=str(state.state_details.flow_run_id)
    )
    assert applied.payload["to"] == run.desired and "state not saved" in applied.payload["reason"]
