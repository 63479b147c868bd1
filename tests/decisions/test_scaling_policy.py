"""decisions.scaling_policy: demands, guardrails, cooldowns, stabilization, schedule."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import numpy as np
import pytest
from pydantic import ValidationError

from decisions.scaling_policy import (
    Observation,
    ScalingPolicy,
    ScalingState,
    Schedule,
    ScheduleWindow,
    StepThresholds,
    decide,
    held_to_group,
    schedule_actions,
)
from decisions.scaling_report import chart_file

NOW = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)  # a Wednesday
STEP = timedelta(minutes=5)


def policy(**kw: object) -> ScalingPolicy:
    """A policy whose rules are checked one at a time: no scale-out headroom or scale-in dead
    band unless a test asks for them (their own tests below)."""
    base: dict[str, object] = dict(
        capacity_per_instance=10.0,
        step=STEP,
        thresholds=None,
        scale_out_headroom=0.0,
        scale_in_tolerance=0.0,
    )
    base.update(kw)
    return ScalingPolicy(**base)


def obs(load: float | list[float], current: int, **kw: object) -> Observation:
    values = [load] * 300 if isinstance(load, float) else load
    base: dict[str, object] = dict(now=NOW, load=values, current=current)
    base.update(kw)
    base.setdefault("last_load_at", base["now"])
    return Observation(**base)  # type: ignore[arg-type]


def test_target_tracking_scales_out_to_the_load_at_the_target() -> None:
    d = decide(policy(), obs(140.0, 10))  # 140 / (10 x 0.7) = 20 instances
    assert (d.desired, d.action) == (20, "scale_out")
    assert d.reason.startswith("target_tracking: load 140")


def test_predictive_demand_wins_scale_out_and_forecast_only_records_it() -> None:
    o = obs(70.0, 10, forecast_upper=[100.0, 210.0, 150.0])  # peak 210 -> 30 instances
    d = decide(policy(), o)
    assert d.desired == 30 and d.reason.startswith("predictive: forecast peak 210")
    only = decide(policy(mode="forecast_only"), o)
    assert only.desired == 10 and only.forecast_peak == 210.0 and "predictive" not in only.demands


def test_bounds_and_max_step_guardrails() -> None:
    d = decide(policy(max_capacity=25), obs(1000.0, 10))
    assert d.desired == 25 and "capped at the maximum 25" in d.reason
    d = decide(policy(max_step=4), obs(1000.0, 10))
    assert d.desired == 14 and "limited to 4 instances per action" in d.reason
    d = decide(policy(min_capacity=5), obs(0.0, 10))
    assert d.desired == 5 and "minimum 5" in d.reason


def test_stabilization_window_holds_scale_in_and_cooldown_blocks_it() -> None:
    p = policy(stabilization_window=timedelta(minutes=30))
    high = decide(p, obs(140.0, 20))
    low = decide(p, obs(35.0, 20, now=NOW + timedelta(minutes=10)), high.state)
    assert low.desired == 20 and "stabilization window" in low.reason
    later = decide(p, obs(35.0, 20, now=NOW + timedelta(minutes=45)), low.state)
    assert later.desired == 5 and later.action == "scale_in"
    cooling = ScalingState(last_action_at=NOW + timedelta(minutes=43))
    blocked = decide(p, obs(35.0, 20, now=NOW + timedelta(minutes=45)), cooling)
    assert blocked.desired == 20 and "no scale-in during the cooldown" in blocked.reason


def test_burst_stretches_the_scale_in_window() -> None:
    p = policy(stabilization_window=timedelta(minutes=5), burst_window=timedelta(hours=1))
    calm = [10.0] * 288
    burst = decide(p, obs([*calm, 200.0], 3))  # 20 x the day's median
    assert burst.state.last_burst_at == NOW
    after = decide(
        p, obs([*calm, 200.0, 10.0], burst.desired, now=NOW + timedelta(minutes=20)), burst.state
    )
    assert after.desired == burst.desired and "1:00:00 stabilization window" in after.reason


def test_scale_in_dead_band_ignores_small_dips() -> None:
    p = policy(scale_in_tolerance=0.12, target_utilization=1.0, target_tracking=False)
    dip = decide(p, obs(150.0, 20, forecast_upper=[180.0]))  # 18: 10 % below 20, in the band
    assert (dip.desired, dip.action) == (20, "none")
    assert "within the 12% dead band below 20" in dip.reason
    drop = decide(p, obs(150.0, 20, forecast_upper=[170.0]))  # 17: 15 % below, outside
    assert (drop.desired, drop.action) == (17, "scale_in")
    assert decide(p, obs(0.0, 2)).desired == 2  # at the minimum: nothing to do
    floor = decide(policy(scale_in_tolerance=0.12, min_capacity=5), obs(0.0, 4))
    assert floor.desired == 5  # below the minimum: raised, the band does not hold it there


def test_scale_out_headroom_covers_the_next_steps_without_flapping() -> None:
    p = policy(scale_out_headroom=0.05, scale_in_tolerance=0.12, target_utilization=1.0)
    out = decide(p, obs(200.0, 10))  # 20 wanted, +5 % -> 21
    assert (out.desired, out.action) == (21, "scale_out") and "+5% headroom (21)" in out.reason
    # the next run with the same load keeps the headroom (inside the dead band)
    again = decide(p, obs(200.0, 21, now=NOW + timedelta(minutes=5)), out.state)
    assert (again.desired, again.action) == (21, "none")
    # a small fleet gets no headroom the dead band would take back (3 / 0.88 < 4)
    small = decide(p, obs(30.0, 2))
    assert small.desired == 3
    assert decide(p, obs(30.0, 3), small.state).action == "none"
    # never above the maximum
    assert decide(policy(scale_out_headroom=0.5, max_capacity=22), obs(200.0, 10)).desired == 22


def test_step_thresholds_after_evaluation_periods() -> None:
    p = policy(thresholds=StepThresholds(), target_utilization=1.0)
    util = [0.5] * 10 + [0.85] * 3
    d = decide(p, obs(85.0, 10, utilization=util))
    assert d.desired == 11 and "above 80% for 3 periods" in d.reason


def test_schedule_bounds_in_its_time_zone_and_warm_in_time() -> None:
    sched = Schedule(
        timezone="America/New_York",
        windows=(ScheduleWindow(min_capacity=8, max_capacity=50),),
        off_hours_min=2,
        off_hours_max=10,
    )
    p = policy(schedule=sched)
    at_noon_ny = datetime(2024, 3, 6, 17, 0, tzinfo=UTC)  # 12:00 in New York
    assert decide(p, obs(0.0, 3, now=at_noon_ny, last_load_at=at_noon_ny)).desired == 8
    night = datetime(2024, 3, 7, 4, 0, tzinfo=UTC)  # 23:00 in New York: max 10
    assert decide(p, obs(500.0, 5, now=night, last_load_at=night)).desired == 10
    before_open = datetime(2024, 3, 6, 13, 55, tzinfo=UTC)  # 08:55: the window starts in boot
    d = decide(p, obs(0.0, 2, now=before_open, last_load_at=before_open))
    assert d.desired == 8 and "starting within the boot time" in d.reason
    actions = schedule_actions(sched)
    # bounds only: no desired capacity that would override the decisions when the action runs
    assert actions[0] == (
        "perfops-business-hours-start",
        "0 9 * * MON,TUE,WED,THU,FRI",
        8,
        50,
        "America/New_York",
    )
    assert actions[1] == (
        "perfops-business-hours-end",
        "0 17 * * MON,TUE,WED,THU,FRI",
        2,
        10,
        "America/New_York",
    )


@pytest.mark.parametrize(
    ("o", "reason"),
    [
        (obs([], 10), "no load data"),
        (obs(50.0, 10, last_load_at=NOW - timedelta(hours=1)), "stale"),
        (obs(50.0, 10, last_load_at=None), "stale"),
        (obs(50.0, 10, missing_fraction=0.6), "60% of the load history is missing"),
        (obs([50.0, float("nan")], 10), "missing"),
    ],
)
def test_fail_static_on_stale_or_missing_data(o: Observation, reason: str) -> None:
    d = decide(policy(), o)
    assert d.action == "fail_static" and d.desired == 10 and reason in d.reason


def test_flat_zero_and_negative_load_go_to_the_minimum() -> None:
    assert decide(policy(), obs(0.0, 10)).desired == 2
    assert decide(policy(), obs(-5.0, 10)).desired == 2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(min_capacity=10, max_capacity=5), "min_capacity 10 > max_capacity 5"),
        (dict(scale_in_cooldown=timedelta(seconds=-1)), "scale_in_cooldown must not be negative"),
        (dict(target_utilization=1.5), "less than or equal to 1"),
        (dict(capacity_per_instance=0), "greater than 0"),
    ],
)
def test_bad_policies_are_rejected_with_a_message(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        policy(**kw)


def test_bad_schedules_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        Schedule(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="min_capacity 9 > max_capacity 3"):
        ScheduleWindow(min_capacity=9, max_capacity=3)
    with pytest.raises(ValidationError, match="not after start"):
        ScheduleWindow(min_capacity=1, max_capacity=3, start=time(17), end=time(9))


def test_windows_of_one_name_are_rejected_naming_it() -> None:
    """Two windows named alike (here both left at the default `business-hours`) would both be
    written as perfops-business-hours-start/-end, each overwriting the other on every run."""
    weekdays = ScheduleWindow(min_capacity=6, max_capacity=100)
    saturday = ScheduleWindow(
        days=(5,), start=time(10), end=time(14), min_capacity=3, max_capacity=50
    )
    with pytest.raises(
        ValidationError,
        match=r"window names must be unique: 'business-hours' \(2 windows\); .*"
        r"perfops-<name>-start .* give each window its own name",
    ):
        Schedule(windows=(weekdays, saturday))
    named = Schedule(windows=(weekdays, saturday.model_copy(update={"name": "saturday"})))
    assert [a[0] for a in schedule_actions(named)] == [
        "perfops-business-hours-start",
        "perfops-business-hours-end",
        "perfops-saturday-start",
        "perfops-saturday-end",
    ]


def test_overlapping_windows_are_rejected_and_windows_that_meet_hand_over() -> None:
    """A window inside another (lunch in business hours) would end by restoring the off-hours
    bounds while the outer one still holds; a window ending as the next starts must not race
    the next one's start with an off-hours end action at the same minute."""
    business = ScheduleWindow(name="business", min_capacity=4, max_capacity=50)
    lunch = ScheduleWindow(
        name="lunch", start=time(12), end=time(14), min_capacity=8, max_capacity=50
    )
    with pytest.raises(
        ValidationError,
        match=r"windows 'business' and 'lunch' overlap on MON,TUE,WED,THU,FRI from 12:00 to "
        r"14:00: the end of one would restore the off-hours bounds inside the other",
    ):
        Schedule(windows=(business, lunch))
    morning = ScheduleWindow(
        name="morning", start=time(8), end=time(12), min_capacity=10, max_capacity=50
    )
    afternoon = ScheduleWindow(
        name="afternoon",
        days=(0, 1, 2),
        start=time(12),
        end=time(18),
        min_capacity=6,
        max_capacity=50,
    )
    sched = Schedule(windows=(morning, afternoon), off_hours_min=2, off_hours_max=20)
    assert schedule_actions(sched) == [
        ("perfops-morning-start", "0 8 * * MON,TUE,WED,THU,FRI", 10, 50, "UTC"),
        ("perfops-morning-end", "0 12 * * THU,FRI", 2, 20, "UTC"),  # Mon-Wed: afternoon starts
        ("perfops-afternoon-start", "0 12 * * MON,TUE,WED", 6, 50, "UTC"),
        ("perfops-afternoon-end", "0 18 * * MON,TUE,WED", 2, 20, "UTC"),
    ]
    every_day = afternoon.model_copy(update={"days": (0, 1, 2, 3, 4)})
    names = [a[0] for a in schedule_actions(Schedule(windows=(morning, every_day)))]
    assert "perfops-morning-end" not in names  # the afternoon's start takes over every day
    monday_noon = datetime(2024, 3, 4, 12, 30, tzinfo=UTC)
    assert sched.bounds_at(monday_noon) == (6, 50, "afternoon")


def test_a_decision_is_held_to_the_groups_own_bounds() -> None:
    d = decide(policy(), obs(0.0, 6))  # wants the policy's minimum, 2
    assert d.desired == 2
    held = held_to_group(d, 4, 40)  # business hours: the group's MinSize is 4
    assert (held.desired, held.action) == (4, "scale_in")
    assert held.reason == f"{d.reason}; held to the group's MinSize 4"
    at_min = held_to_group(decide(policy(), obs(0.0, 4)), 4, 40)
    assert (at_min.desired, at_min.action, at_min.changes) == (4, "none", False)
    assert held_to_group(d, 2, 40) is d  # inside the bounds: unchanged
    blind = decide(policy(), obs([], 6))
    assert held_to_group(blind, 8, 40) is blind  # no decision stays no decision


def test_decision_is_fast() -> None:
    import time as clock

    p = policy()
    o = obs(list(np.random.default_rng(0).uniform(0, 100, 10_000)), 10, forecast_upper=[50.0] * 3)
    t0 = clock.perf_counter()
    for _ in range(100):
        decide(p, o)
    assert (clock.perf_counter() - t0) / 100 < 0.02  # ~1 ms idle; benchmarks.scaling measures


def test_each_group_key_has_its_own_chart_file() -> None:
    assert chart_file("api") == "api.png"
    assert chart_file("eu-west-1/api") == "eu-west-1/api.png"
    assert chart_file("us-east-1/api") == "us-east-1/api.png"
    assert chart_file("127.0.0.1:5000/../api x") == "127.0.0.1_5000/_/api_x.png"


def test_a_load_that_collapses_to_zero_does_not_scale_in_until_the_median_follows() -> None:
    """An outage (or an exporter reporting zero) took a group at 30 instances down by its
    whole scale-in at once: with a forecast whose spread shrank the stabilization window, or
    a tuned simple policy (5-minute window, no burst window), to the minimum in one run. A
    collapse (under 10 % of the last hour's median) holds scale-in; once the median has
    followed (half the hour at the new level), scale-in resumes behind its guardrails."""
    p = policy(stabilization_window=timedelta(0), max_step=30)
    steady = [210.0] * 288
    held = decide(p, obs([*steady, 0.0], 30))
    assert (held.desired, held.action) == (30, "none")
    assert "no scale-in: the load fell to 0, under 10% of its median 210" in held.reason
    dip = decide(p, obs([*steady, 100.0], 30))  # half the load: a real dip scales in
    assert dip.desired == 15 and dip.action == "scale_in"
    lasting = decide(p, obs([*steady, *[0.0] * 8], 30))  # 40 minutes of zero: the median is 0
    assert lasting.desired == 2 and lasting.action == "scale_in"
    off = decide(
        policy(stabilization_window=timedelta(0), collapse_fraction=0.0), obs([*steady, 0.0], 30)
    )
    assert off.desired == 10  # turned off: max_step's 20 only
