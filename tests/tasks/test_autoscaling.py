"""Auto Scaling tasks against the moto server; Redis lock/state against real Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis

from blocks import RedisTarget
from decisions.scaling_policy import ScalingState, Schedule, ScheduleWindow, schedule_actions
from perfops.errors import ConfigurationError, ConnectionFailed, LockBusy
from tasks.autoscaling import (
    AutoScalingTarget,
    GroupChanged,
    ScheduledAction,
    action_change,
    client_for,
    delete_actions,
    describe_group,
    put_schedule,
    scheduled_actions,
    set_capacity,
    stale_actions,
)
from tasks.scaling_state import group_lock, load_state, read_history, save_state
from tests.servers import MotoServer
from tests.servers.ports import free_port
from tests.servers.redis_cluster import start_private_redis


@pytest.fixture()
def asg(moto_server: MotoServer) -> Any:
    moto_server.reset()
    client = boto3.client("autoscaling", **moto_server.client_kwargs())
    client.create_launch_configuration(
        LaunchConfigurationName="web-lc", ImageId="ami-12345678", InstanceType="t3.micro"
    )
    client.create_auto_scaling_group(
        AutoScalingGroupName="web",
        LaunchConfigurationName="web-lc",
        MinSize=2,
        MaxSize=6,
        DesiredCapacity=2,
        AvailabilityZones=["us-east-1a"],
    )
    return client_for(AutoScalingTarget(group="web", endpoint_url=moto_server.endpoint_url))


def test_describe_and_set_capacity_verified(asg: Any) -> None:
    assert describe_group(asg, "web").desired == 2
    after = set_capacity(asg, "web", 5)
    assert (after.desired, after.instances) == (5, 5)
    assert set_capacity(asg, "web", 5).desired == 5  # rerun: nothing to change


def test_perfops_enforces_the_groups_bounds(asg: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"outside group 'web'.s bounds \[2, 6\]"):
        set_capacity(asg, "web", 9)
    assert describe_group(asg, "web").desired == 2  # nothing changed


def test_missing_group_is_a_clear_error(asg: Any) -> None:
    with pytest.raises(ConfigurationError, match="group 'nope' does not exist"):
        describe_group(asg, "nope")


def test_schedule_is_written_once(asg: Any) -> None:
    actions = [ScheduledAction(*a) for a in schedule_actions(Schedule())]
    assert put_schedule(asg, "web", actions) == [
        "perfops-business-hours-start",
        "perfops-business-hours-end",
    ]
    assert put_schedule(asg, "web", actions) == []  # idempotent
    described = asg.describe_scheduled_actions(AutoScalingGroupName="web")
    recurrences = sorted(a["Recurrence"] for a in described["ScheduledUpdateGroupActions"])
    assert recurrences == ["0 17 * * MON,TUE,WED,THU,FRI", "0 9 * * MON,TUE,WED,THU,FRI"]
    # bounds only: an action with a DesiredCapacity would set the group's capacity when it runs
    assert [
        (a["MinSize"], a["MaxSize"], a.get("DesiredCapacity"))
        for a in described["ScheduledUpdateGroupActions"]
    ] == [(4, 100, None), (2, 100, None)]


def test_an_action_that_sets_the_desired_capacity_is_rewritten_without_it(asg: Any) -> None:
    """An older perfops wrote DesiredCapacity = the window's min: at 17:00 the group dropped to
    the off-hours minimum whatever its load. Found so, the action is a change to rewrite."""
    for name, cron, low in (
        ("perfops-business-hours-start", "0 9 * * MON,TUE,WED,THU,FRI", 4),
        ("perfops-business-hours-end", "0 17 * * MON,TUE,WED,THU,FRI", 2),
    ):
        asg.put_scheduled_update_group_action(
            AutoScalingGroupName="web",
            ScheduledActionName=name,
            Recurrence=cron,
            MinSize=low,
            MaxSize=100,
            DesiredCapacity=low,
            TimeZone="UTC",
        )
    found = scheduled_actions(asg, "web")
    actions = [ScheduledAction(*a) for a in schedule_actions(Schedule())]
    assert [action_change(found[a.name], a) for a in actions] == [
        "sets desired capacity 4 when it runs, overriding the scaling decisions: rewritten "
        "with bounds only",
        "sets desired capacity 2 when it runs, overriding the scaling decisions: rewritten "
        "with bounds only",
    ]
    assert put_schedule(asg, "web", actions) == [a.name for a in actions]
    described = asg.describe_scheduled_actions(AutoScalingGroupName="web")
    assert all("DesiredCapacity" not in a for a in described["ScheduledUpdateGroupActions"])
    assert put_schedule(asg, "web", actions) == []  # then idempotent
    with pytest.raises(ConfigurationError, match="without a desired capacity expected"):
        put_schedule(asg, "web", [ScheduledAction("x", "0 9 * * *", 1, 5, "UTC", desired=2)])


def test_a_schedule_of_two_windows_keeps_both_and_a_rerun_changes_nothing(asg: Any) -> None:
    schedule = Schedule(
        windows=(
            ScheduleWindow(min_capacity=4, max_capacity=6),
            ScheduleWindow(
                name="saturday",
                days=(5,),
                start=time(10),
                end=time(14),
                min_capacity=3,
                max_capacity=5,
            ),
        ),
    )
    actions = [ScheduledAction(*a) for a in schedule_actions(schedule)]
    names = [
        "perfops-business-hours-start",
        "perfops-business-hours-end",
        "perfops-saturday-start",
        "perfops-saturday-end",
    ]
    assert put_schedule(asg, "web", actions) == names
    for _ in range(2):
        assert put_schedule(asg, "web", actions) == []  # idempotent
    described = asg.describe_scheduled_actions(AutoScalingGroupName="web")
    written = {a["ScheduledActionName"]: a for a in described["ScheduledUpdateGroupActions"]}
    assert sorted(written) == sorted(names)
    assert written["perfops-saturday-start"]["Recurrence"] == "0 10 * * SAT"
    assert written["perfops-business-hours-start"]["Recurrence"] == "0 9 * * MON,TUE,WED,THU,FRI"


def test_actions_of_windows_gone_from_the_schedule_are_deleted_once(asg: Any) -> None:
    """perfops' own actions (perfops-*) the schedule no longer has go; a rerun after a crash
    (one already deleted) finishes the work; actions perfops did not name stay."""
    for name in ("perfops-saturday-start", "perfops-saturday-end", "nightly-batch"):
        asg.put_scheduled_update_group_action(
            AutoScalingGroupName="web", ScheduledActionName=name, Recurrence="0 3 * * *", MinSize=3
        )
    wanted = [ScheduledAction("perfops-business-hours-start", "0 9 * * MON", 4, 6)]
    stale = stale_actions(scheduled_actions(asg, "web"), wanted)
    assert stale == ["perfops-saturday-end", "perfops-saturday-start"]
    asg.delete_scheduled_action(AutoScalingGroupName="web", ScheduledActionName=stale[0])
    assert delete_actions(asg, "web", stale) == stale
    assert list(scheduled_actions(asg, "web")) == ["nightly-batch"]


def test_throttling_is_retried_with_backoff(asg: Any) -> None:
    """moto never throttles: two Throttling replies are injected before the real call (botocore's
    standard retry mode must retry them)."""
    calls = {"n": 0}

    def throttle(request: Any, **_: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            from botocore.awsrequest import AWSResponse, HTTPHeaders

            body = (
                b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
                b"<Message>Rate exceeded</Message></Error></ErrorResponse>"
            )
            return AWSResponse(request.url, 400, HTTPHeaders(), _Raw(body))
        return None

    asg.meta.events.register("before-send.auto-scaling.DescribeAutoScalingGroups", throttle)
    assert describe_group(asg, "web").desired == 2
    assert calls["n"] == 3


def _error_after(store: Any, asg: Any, status: int, code: str) -> None:
    """Answer every SetDesiredCapacity with `status` (one attempt: no retries in this client),
    having first stored it through `store` when that is a client (AWS failed after storing)."""

    def answer(request: Any, **_: Any) -> Any:
        from urllib.parse import parse_qs

        from botocore.awsrequest import AWSResponse, HTTPHeaders

        if store is not None:
            body = request.body if isinstance(request.body, str) else request.body.decode()
            wanted = parse_qs(body)["DesiredCapacity"][0]
            store.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=int(wanted))
        body = (
            f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code>"
            "<Message>try again</Message></Error></ErrorResponse>"
        ).encode()
        return AWSResponse(request.url, status, HTTPHeaders(), _Raw(body))

    asg.meta.events.register("before-send.auto-scaling.SetDesiredCapacity", answer)


@pytest.fixture()
def no_retries(moto_server: MotoServer, asg: Any) -> Any:
    """A client of the group's server that makes one attempt per call."""
    from botocore.config import Config

    return boto3.client(
        "autoscaling",
        **moto_server.client_kwargs(),
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def test_a_5xx_answer_to_a_change_aws_stored_is_verified_done(asg: Any, no_retries: Any) -> None:
    _error_after(asg, no_retries, 503, "ServiceUnavailable")
    assert set_capacity(no_retries, "web", 5, expected=2).desired == 5
    assert describe_group(asg, "web").desired == 5


def test_a_5xx_answer_to_a_change_not_stored_is_unavailable_not_refused(
    asg: Any, no_retries: Any
) -> None:
    _error_after(None, no_retries, 500, "InternalFailure")
    with pytest.raises(ConnectionFailed, match=r"kept failing set_desired_capacity .*HTTP 500"):
        set_capacity(no_retries, "web", 5, expected=2)
    assert describe_group(asg, "web").desired == 2


def test_a_group_changed_since_the_decision_is_left_as_it_is(asg: Any) -> None:
    """The decision's step and cooldown were measured from the capacity it read: a group
    another hand moved meanwhile (2 -> 6 here) is not set from the stale figure."""
    asg.set_desired_capacity(AutoScalingGroupName="web", DesiredCapacity=6)
    with pytest.raises(GroupChanged, match="at desired capacity 6, not the 2 this decision"):
        set_capacity(asg, "web", 3, expected=2)
    assert describe_group(asg, "web").desired == 6
    # already where the decision wanted it (a rerun after a crash): nothing to do, no error
    assert set_capacity(asg, "web", 6, expected=2).desired == 6


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body

    def read(self) -> bytes:
        return self.body


def test_lock_lets_one_run_decide(redis_target: RedisTarget) -> None:
    entered = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with group_lock(redis_target, "web"):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(5)
    busy = "another scaling run holds the lock of group 'web'"
    with pytest.raises(LockBusy, match=busy), group_lock(redis_target, "web"):
        pass
    release.set()
    t.join()
    with group_lock(redis_target, "web"):  # free again
        pass


def test_state_and_history_round_trip(redis_target: RedisTarget) -> None:
    at = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)
    state = ScalingState(last_action_at=at, recommendations=((at, 7),))
    save_state.fn(redis_target, "web", state, {"desired": 7, "reason": "test"})
    assert load_state.fn(redis_target, "web") == state
    assert read_history(redis_target, "web")[0] == {"desired": 7, "reason": "test"}


def test_redis_down_is_a_clear_error() -> None:
    down = RedisTarget(url="redis://127.0.0.1:1/0", retries=0, socket_timeout_s=0.5)
    with pytest.raises(ConnectionFailed, match="no action taken"), group_lock(down, "web"):
        pass
    with pytest.raises(ConnectionFailed, match="no action taken"):
        load_state.fn(down, "web")


def _write_as_aws_returns_it(asg: Any, schedule: Schedule, zone: str) -> None:
    """The schedule's actions on the group as AWS may give them back: another name of its zone."""
    for name, cron, low, high, _ in schedule_actions(schedule):
        asg.put_scheduled_update_group_action(
            AutoScalingGroupName="web",
            ScheduledActionName=name,
            Recurrence=cron,
            MinSize=low,
            MaxSize=high,
            TimeZone=zone,
        )


@pytest.mark.parametrize(
    ("wanted", "on_the_group"),
    [("UTC", "Etc/UTC"), ("Etc/UTC", "UTC"), ("UTC", "GMT"), ("US/Eastern", "America/New_York")],
)
def test_an_action_whose_zone_aws_spells_otherwise_is_not_rewritten(
    asg: Any, wanted: str, on_the_group: str
) -> None:
    """Compared as strings, `Etc/UTC` on the group differed from the `UTC` written: every apply
    rewrote the actions and reported changes, forever."""
    schedule = Schedule(timezone=wanted)
    _write_as_aws_returns_it(asg, schedule, on_the_group)
    actions = [ScheduledAction(*a) for a in schedule_actions(schedule)]
    found = scheduled_actions(asg, "web")
    assert {found[a.name].timezone for a in actions} == {on_the_group}
    assert [action_change(found[a.name], a) for a in actions] == [None, None]
    assert put_schedule(asg, "web", actions) == []
    described = asg.describe_scheduled_actions(AutoScalingGroupName="web")
    assert {a["TimeZone"] for a in described["ScheduledUpdateGroupActions"]} == {on_the_group}


def test_an_action_in_another_zone_is_rewritten_saying_so(asg: Any) -> None:
    schedule = Schedule(timezone="Europe/Berlin")
    _write_as_aws_returns_it(asg, schedule, "Europe/London")
    actions = [ScheduledAction(*a) for a in schedule_actions(schedule)]
    found = scheduled_actions(asg, "web")
    assert action_change(found[actions[0].name], actions[0]) == (
        "different on the group: time zone Europe/London on the group, Europe/Berlin wanted"
    )
    assert put_schedule(asg, "web", actions) == [a.name for a in actions]
    after = scheduled_actions(asg, "web")
    assert {after[a.name].timezone for a in actions} == {"Europe/Berlin"}


def test_a_changed_bound_is_named_in_the_reason(asg: Any) -> None:
    _write_as_aws_returns_it(asg, Schedule(off_hours_min=1), "UTC")
    actions = [ScheduledAction(*a) for a in schedule_actions(Schedule())]
    found = scheduled_actions(asg, "web")
    assert [action_change(found[a.name], a) for a in actions] == [
        None,
        "different on the group: min 1 on the group, 2 wanted",
    ]


def _clients(probe: redis.Redis) -> int:
    info: dict[str, Any] = probe.info("clients")  # type: ignore[assignment]
    return int(info["connected_clients"])


def test_a_run_the_lock_turns_away_leaves_no_connection_behind(tmp_path: Path) -> None:
    """A skipped run (another holds the group's lock) closes its Redis connection: each one
    left a connection open, one per skipped run every 10 minutes (a private redis-server, so
    its client count is this test's alone)."""
    port = free_port()
    server = start_private_redis(port, tmp_path)
    try:
        target = RedisTarget(url=f"redis://127.0.0.1:{port}/0")
        probe = redis.Redis(port=port)
        busy: list[LockBusy] = []  # kept, as a caller's logs and retries may keep them
        with group_lock(target, "web"):
            before = _clients(probe)
            for _ in range(10):
                with pytest.raises(LockBusy) as caught, group_lock(target, "web"):
                    pass
                busy.append(caught.value)
            after = _clients(probe)
        assert after == before, (before, after)
        probe.close()
    finally:
        server.kill()
        server.wait(timeout=20)
