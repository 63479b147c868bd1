"""Scaling decisions: pure functions and pydantic models, no I/O, no Prefect.

`decide(policy, observation, state)` turns the load history, an (upper) load forecast, the
current capacity and the remembered state (last actions, recent recommendations) into a desired
capacity and the reasons for it. Every demand is expressed in instances:

- target tracking: the current load at the target utilisation (Kubernetes HPA, scale-out at once);
- step thresholds: utilisation above 80 % for 3 evaluation periods adds 10/20/30 %, below 30 %
  for 15 periods removes as much (AWS step scaling; cooldown between actions);
- schedule: business-hours / off-hours windows in a time zone, each with its own min/max, and
  the window starting within the provisioning delay already counts (instances warm in time);
- predictive: the upper-quantile forecast peak of the next boot-time + 1 steps at the target
  utilisation (AWS predictive scaling, "forecast and scale"; in "forecast only" it is recorded
  but not used).

Scale-out: the largest demand wins, plus a little headroom (`scale_out_headroom`) so one action
covers the next steps of a rising load. Scale-in: the largest recommendation of the
stabilization window wins (HPA), the window is stretched after a burst (load well above the
fleet's recent norm tends to come back), never during the scale-in cooldown, never while the
load has collapsed far below its recent median (an outage or a broken metric), and not at all
within a dead band (`scale_in_tolerance`) below the current capacity, so small dips and the
headroom of the last scale-out do not act (fewer actions than following the load step by
step; the headroom is capped to what the dead band keeps, so the two never flap). Guardrails
always: min/max (including the schedule's), at most `max_step` instances per action, and no
action at all on stale or missing data ("fail static").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from decisions.time_zones import time_zone_problem
from perfops.clock import as_utc
from perfops.wording import figure

EPS = 1e-9
ADAPTIVE_SPREAD = 0.5  # an upper bound 50 % above the forecast: the full stabilization window
Mode = Literal["forecast_and_scale", "forecast_only", "reactive"]


class StepThresholds(BaseModel):
    """AWS step scaling on fleet utilisation (the seed's 80 % / 30 %)."""

    model_config = ConfigDict(extra="forbid")

    scale_out_above: float = Field(0.80, gt=0, le=2, description="Utilisation that adds capacity.")
    scale_in_below: float = Field(0.30, ge=0, lt=1, description="Utilisation that removes it.")
    scale_out_periods: int = Field(3, ge=1, description="Evaluation periods above to scale out.")
    scale_in_periods: int = Field(15, ge=1, description="Evaluation periods below to scale in.")
    steps: tuple[tuple[float, float], ...] = Field(
        ((0.10, 0.10), (0.20, 0.20), (math.inf, 0.30)),
        description="(distance from the threshold below which, fraction of capacity) pairs.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> StepThresholds:
        if self.scale_in_below >= self.scale_out_above:
            raise ValueError(
                f"scale_in_below ({self.scale_in_below}) must be below scale_out_above "
                f"({self.scale_out_above})"
            )
        return self


CRON_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


class ScheduleWindow(BaseModel):
    """A recurring window (e.g. business hours) with its own capacity bounds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("business-hours", min_length=1)
    days: tuple[int, ...] = Field((0, 1, 2, 3, 4), description="Weekdays, Monday = 0.")
    start: time = Field(time(9, 0), description="Local start time.")
    end: time = Field(time(17, 0), description="Local end time (exclusive).")
    min_capacity: int = Field(ge=0)
    max_capacity: int = Field(ge=1)

    @model_validator(mode="after")
    def _valid(self) -> ScheduleWindow:
        if self.min_capacity > self.max_capacity:
            raise ValueError(
                f"window {self.name!r}: min_capacity {self.min_capacity} > max_capacity "
                f"{self.max_capacity}"
            )
        if self.end <= self.start:
            raise ValueError(
                f"window {self.name!r}: end {self.end} is not after start {self.start}"
            )
        bad = [d for d in self.days if not 0 <= d <= 6]
        if bad or not self.days:
            raise ValueError(f"window {self.name!r}: days must be weekdays 0..6, got {self.days}")
        return self

    def contains(self, local: datetime) -> bool:
        return local.weekday() in self.days and self.start <= local.time() < self.end


class Schedule(BaseModel):
    """Scheduled capacity: windows in a time zone; outside them the off-hours bounds."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field("UTC", description="IANA time zone the windows are in.")
    windows: tuple[ScheduleWindow, ...] = Field(
        default_factory=lambda: (ScheduleWindow(min_capacity=4, max_capacity=100),)
    )
    off_hours_min: int = Field(2, ge=0)
    off_hours_max: int = Field(100, ge=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        problem = time_zone_problem(value)  # before any scheduled action is written with it
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Schedule:
        if self.off_hours_min > self.off_hours_max:
            raise ValueError(
                f"off_hours_min {self.off_hours_min} > off_hours_max {self.off_hours_max}"
            )
        names = Counter(w.name for w in self.windows)
        twice = [f"{n!r} ({c} windows)" for n, c in names.items() if c > 1]
        if twice:
            raise ValueError(
                f"window names must be unique: {', '.join(twice)}; each window is written as "
                "the scheduled actions perfops-<name>-start and perfops-<name>-end, so windows "
                "of one name would overwrite each other: give each window its own name"
            )
        for i, a in enumerate(self.windows):
            for b in self.windows[i + 1 :]:
                days = sorted(set(a.days) & set(b.days))
                if days and a.start < b.end and b.start < a.end:
                    raise ValueError(
                        f"windows {a.name!r} and {b.name!r} overlap on "
                        f"{','.join(CRON_DAYS[d] for d in days)} from "
                        f"{max(a.start, b.start):%H:%M} to {min(a.end, b.end):%H:%M}: the end "
                        "of one would restore the off-hours bounds inside the other; split "
                        "them so they only meet (one ending when the next starts)"
                    )
        return self

    def bounds_at(self, moment: datetime) -> tuple[int, int, str]:
        """(min, max, window name) in force at `moment` (aware, or naive = UTC)."""
        local = as_utc(moment).astimezone(ZoneInfo(self.timezone))
        for window in self.windows:
            if window.contains(local):
                return window.min_capacity, window.max_capacity, window.name
        return self.off_hours_min, self.off_hours_max, "off-hours"


class ScalingPolicy(BaseModel):
    """Everything that decides a group's capacity; validated, with safe defaults."""

    model_config = ConfigDict(extra="forbid")

    min_capacity: int = Field(2, ge=0, description="Never fewer instances than this.")
    max_capacity: int = Field(100, ge=1, description="Never more instances than this.")
    capacity_per_instance: float = Field(
        gt=0, description="Load one instance serves at 100 % utilisation (load units per step)."
    )
    target_utilization: float = Field(0.70, gt=0, le=1, description="Utilisation aimed at.")
    mode: Mode = Field(
        "forecast_and_scale",
        description="forecast_and_scale: forecasts raise capacity ahead of load; forecast_only: "
        "they are recorded, not used; reactive: no forecast at all.",
    )
    forecast_quantile: float = Field(0.90, gt=0, lt=1, description="Upper forecast quantile.")
    forecast_margin: Literal["additive", "ratio"] = Field(
        "additive",
        description="How the forecast's upper bound is calibrated: additive (forecast plus "
        "the quantile of recent realised - forecast peaks, in load units) or ratio (times "
        "the quantile of realised / forecast peaks); the tuning back-test picks one.",
    )
    boot_time: timedelta = Field(
        timedelta(minutes=10), ge=timedelta(0), description="Launch until an instance serves."
    )
    step: timedelta = Field(timedelta(minutes=5), gt=timedelta(0), description="Metric step.")
    max_step: int = Field(20, ge=1, description="At most this many instances per action.")
    scale_out_cooldown: timedelta = Field(timedelta(0), description="Wait after a scale-out.")
    scale_in_cooldown: timedelta = Field(
        timedelta(minutes=5), description="No scale-in this long after any action."
    )
    stabilization_window: timedelta = Field(
        timedelta(minutes=30),
        description="Scale-in goes no lower than the highest recommendation of this window.",
    )
    adaptive_stabilization: bool = Field(
        True,
        description="Scale the stabilization window by the forecast's relative spread "
        "(upper / mean - 1, full window at 50 %): smooth load scales in at once, bursty "
        "load waits.",
    )
    burst_window: timedelta = Field(
        timedelta(minutes=30),
        description="After a burst (load above burst_factor x its recent median), the "
        "stabilization window stretches to this.",
    )
    burst_factor: float = Field(
        2.0, gt=1, description="A burst: load above this times the median of burst_baseline."
    )
    burst_baseline: timedelta = Field(timedelta(hours=1), gt=timedelta(0))
    collapse_fraction: float = Field(
        0.10,
        ge=0,
        lt=1,
        description="A load below this fraction of its median over burst_baseline is a "
        "collapse (an outage, or a broken exporter reporting zero, looks the same): no "
        "scale-in until the median follows it (half the baseline); 0 turns it off.",
    )
    tolerance: float = Field(0.10, ge=0, lt=1, description="Target-tracking dead band.")
    scale_in_tolerance: float = Field(
        0.12,
        ge=0,
        lt=1,
        description="Scale-in dead band: no scale-in unless the recommendation is more than "
        "this fraction below the current capacity (small dips do not act).",
    )
    scale_out_headroom: float = Field(
        0.03,
        ge=0,
        le=1,
        description="A scale-out adds this fraction on top of the demand, so one action "
        "covers the next steps of a rising load.",
    )
    target_tracking: bool = Field(
        True, description="Include the reactive target-tracking demand (a floor under forecasts)."
    )
    reactive_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Utilisation the target-tracking floor aims at (default: the target); "
        "with a calibrated forecast, 1.0 keeps the floor from paying for headroom twice.",
    )
    thresholds: StepThresholds | None = Field(
        None, description="The seed's 80 %/30 % step policy as one more demand (off by default)."
    )
    schedule: Schedule | None = None
    schedule_floor: Schedule | None = Field(
        None,
        description="A tuned schedule (`tune_scaling` chose 'scheduled p99 + target tracking'): "
        "the minimum of its bounds is a floor under the decisions, on top of `schedule` (the "
        "group's own, which stays).",
    )
    max_data_age: timedelta = Field(
        timedelta(minutes=15), gt=timedelta(0), description="Older newest data: fail static."
    )
    max_missing_fraction: float = Field(0.25, ge=0, le=1, description="More missing: fail static.")

    @model_validator(mode="after")
    def _valid(self) -> ScalingPolicy:
        if self.min_capacity > self.max_capacity:
            raise ValueError(f"min_capacity {self.min_capacity} > max_capacity {self.max_capacity}")
        for name in ("scale_out_cooldown", "scale_in_cooldown", "stabilization_window"):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        return self

    @property
    def horizon(self) -> int:
        """Steps a decision looks ahead: the boot time plus the first serving step."""
        return max(1, math.ceil(self.boot_time / self.step - EPS)) + 1

    def need(self, load: float, utilization: float | None = None) -> int:
        """Instances that serve `load` at `utilization` (default: the target)."""
        util = utilization or self.target_utilization
        return max(0, math.ceil(load / (self.capacity_per_instance * util) - EPS))


@dataclass(frozen=True)
class Observation:
    """What a decision sees: load up to now, the fleet, and optional forecast / utilisation."""

    now: datetime
    load: Sequence[float] | np.ndarray  # regular history, oldest first, last = current step
    last_load_at: datetime | None  # time of the newest data point (stale data check)
    current: int  # desired capacity of the group now (serving + launching)
    ready: int | None = None  # serving instances (default: current)
    utilization: Sequence[float] | np.ndarray | None = None  # per step, newest last
    forecast_upper: Sequence[float] | np.ndarray | None = None  # next `horizon` steps
    forecast_mean: Sequence[float] | np.ndarray | None = None
    missing_fraction: float = 0.0


@dataclass(frozen=True)
class ScalingState:
    """What a decision remembers between runs (persisted in Redis by the flow)."""

    last_action_at: datetime | None = None
    last_scale_out_at: datetime | None = None
    last_burst_at: datetime | None = None
    recommendations: tuple[tuple[datetime, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    current: int
    desired: int
    action: Literal["scale_out", "scale_in", "none", "fail_static"]
    reason: str
    demands: dict[str, int] = field(default_factory=dict)
    load: float | None = None
    forecast_peak: float | None = None
    bounds: tuple[int, int] = (0, 0)
    state: ScalingState = field(default_factory=ScalingState)

    @property
    def changes(self) -> bool:
        return self.desired != self.current


def _pct(distance: float, table: tuple[tuple[float, float], ...]) -> float:
    for upper, pct in table:
        if distance < upper:
            return pct
    return table[-1][1]


def _step_demand(policy: ScalingPolicy, obs: Observation, util: np.ndarray) -> tuple[int, str]:
    th = policy.thresholds
    assert th is not None
    total = obs.current
    if len(util) >= th.scale_out_periods and np.all(
        util[-th.scale_out_periods :] > th.scale_out_above
    ):
        pct = _pct(float(util[-1]) - th.scale_out_above, th.steps)
        return total + max(1, math.floor(total * pct)), (
            f"utilisation above {th.scale_out_above:.0%} for {th.scale_out_periods} periods"
        )
    if len(util) >= th.scale_in_periods and np.all(
        util[-th.scale_in_periods :] < th.scale_in_below
    ):
        pct = _pct(th.scale_in_below - float(util[-1]), th.steps)
        return total - max(1, math.floor(total * pct)), (
            f"utilisation below {th.scale_in_below:.0%} for {th.scale_in_periods} periods"
        )
    return total, "utilisation within thresholds"


def _schedule_bounds(
    policy: ScalingPolicy, schedule: Schedule, now: datetime
) -> tuple[int, int, str]:
    """`schedule`'s bounds now; a window that starts within the boot time already counts:
    instances warm in time."""
    ahead = now + policy.boot_time + policy.step
    s_lo, s_hi, s_name = schedule.bounds_at(now)
    a_lo, _, a_name = schedule.bounds_at(ahead)
    if a_lo > s_lo:
        s_lo, s_name = a_lo, f"{a_name} (starting within the boot time)"
    return s_lo, s_hi, s_name


def _bounds(policy: ScalingPolicy, now: datetime) -> tuple[int, int, str]:
    lo, hi, name = policy.min_capacity, policy.max_capacity, "policy"
    if policy.schedule is not None:
        s_lo, s_hi, s_name = _schedule_bounds(policy, policy.schedule, now)
        lo, hi, name = max(lo, s_lo), min(hi, max(s_hi, s_lo)), s_name
        lo = min(lo, hi)
    if policy.schedule_floor is not None:
        f_lo, _, f_name = _schedule_bounds(policy, policy.schedule_floor, now)
        if f_lo > lo:
            lo, name = min(f_lo, hi), f"tuned schedule {f_name}"
    return lo, hi, name


def _fail_static(obs: Observation, state: ScalingState, reason: str) -> Decision:
    return Decision(obs.current, obs.current, "fail_static", reason, state=state)


def decide(policy: ScalingPolicy, obs: Observation, state: ScalingState | None = None) -> Decision:
    """The desired capacity and why; `Decision.state` is what to remember for the next run."""
    state = state or ScalingState()
    now = as_utc(obs.now)
    load = np.asarray(obs.load, dtype=float)
    if load.size == 0:
        return _fail_static(obs, state, "no load data: fail static, capacity unchanged")
    if obs.last_load_at is None or now - as_utc(obs.last_load_at) > policy.max_data_age:
        age = "never" if obs.last_load_at is None else str(now - as_utc(obs.last_load_at))
        return _fail_static(
            obs,
            state,
            f"load data is stale (newest point {age} old, limit {policy.max_data_age}): "
            "fail static, capacity unchanged",
        )
    if obs.missing_fraction > policy.max_missing_fraction or not np.isfinite(load[-1]):
        return _fail_static(
            obs,
            state,
            f"{obs.missing_fraction:.0%} of the load history is missing (limit "
            f"{policy.max_missing_fraction:.0%}): fail static, capacity unchanged",
        )
    current = obs.current
    ready = obs.ready if obs.ready is not None else current
    now_load = max(float(load[-1]), 0.0)
    demands: dict[str, int] = {}
    why: dict[str, str] = {}

    # target tracking: the current load at the target utilisation, with HPA's dead band
    reactive_util = policy.reactive_utilization or policy.target_utilization
    wanted = now_load / (policy.capacity_per_instance * reactive_util)
    # (reactive and forecast-only modes keep target tracking as their decider unless the
    # step thresholds replace it: a tuned step-scaling policy)
    if policy.target_tracking or (
        policy.mode != "forecast_and_scale" and policy.thresholds is None
    ):
        if current > 0 and abs(wanted / current - 1.0) <= policy.tolerance:
            demands["target_tracking"] = current
        else:
            demands["target_tracking"] = math.ceil(wanted - EPS)
        why["target_tracking"] = f"load {figure(now_load)} at {reactive_util:.0%} utilisation"
    if policy.thresholds is not None:
        if obs.utilization is not None:
            util = np.asarray(obs.utilization, dtype=float)
        else:
            util = load / (policy.capacity_per_instance * max(ready, 1))
        demands["step_thresholds"], why["step_thresholds"] = _step_demand(policy, obs, util)

    forecast_peak = None
    if obs.forecast_upper is not None and len(obs.forecast_upper):
        forecast_peak = float(np.nanmax(np.asarray(obs.forecast_upper, dtype=float)))
        if policy.mode == "forecast_and_scale" and np.isfinite(forecast_peak):
            demands["predictive"] = policy.need(max(forecast_peak, 0.0))
            why["predictive"] = (
                f"forecast peak {figure(forecast_peak)} "
                f"(p{100 * policy.forecast_quantile:g}) in the next {policy.horizon} steps"
            )

    lo, hi, bound_name = _bounds(policy, now)

    # burst: the current load far above the previous hour's median -> slow scale-in for a while
    baseline = max(3, int(policy.burst_baseline / policy.step))
    median = float(np.median(load[-baseline - 1 : -1])) if len(load) > 1 else now_load
    last_burst_at = state.last_burst_at
    if now_load > policy.burst_factor * max(median, EPS) and now_load > 0:
        last_burst_at = now
    # burst-aware scale-in: the wider the forecast's upper bound (noisy, bursty load), the
    # longer scale-in waits; a well-forecast load scales in as soon as the forecast allows
    window = policy.stabilization_window
    if (
        policy.adaptive_stabilization
        and obs.forecast_upper is not None
        and obs.forecast_mean is not None
    ):
        mean_peak = float(np.nanmax(np.asarray(obs.forecast_mean, dtype=float)))
        spread = (forecast_peak or 0.0) / mean_peak - 1.0 if mean_peak > 0 else 1.0
        window = window * float(np.clip(spread / ADAPTIVE_SPREAD, 0.0, 1.0))
    if last_burst_at is not None and now - last_burst_at < policy.burst_window:
        window = max(window, policy.burst_window)

    if not demands:  # predictive only, without a forecast: hold
        demands["hold"], why["hold"] = current, "no forecast and no reactive demand"
    driver = max(demands, key=lambda k: demands[k])
    recommendation = min(max(demands[driver], lo), hi)
    bound_note = ""
    if demands[driver] > hi:
        bound_note = f"; capped at the maximum {hi} ({bound_name})"
    elif demands[driver] < lo:
        bound_note = f"; raised to the minimum {lo} ({bound_name})"
    keep = max(window, policy.burst_window)
    recs = (
        *((t, n) for t, n in state.recommendations if now - t <= keep),
        (now, recommendation),
    )
    in_window = [n for t, n in recs if now - t <= window]

    desired, reason = recommendation, f"{driver}: {why[driver]}{bound_note}"
    if recommendation > current and policy.scale_out_headroom > 0:
        # no more headroom than the scale-in dead band keeps (else the next run takes it back)
        kept = math.floor(recommendation / (1.0 - policy.scale_in_tolerance) + EPS)
        padded = min(math.ceil(recommendation * (1.0 + policy.scale_out_headroom) - EPS), kept, hi)
        if padded > recommendation:
            desired = padded
            reason = f"{reason}; +{policy.scale_out_headroom:.0%} headroom ({padded})"
    if recommendation < current:
        held = max(in_window)
        if held > recommendation:
            desired = min(held, current)
            reason = (
                f"scale-in held at {desired} by the {window} stabilization window "
                f"(highest recommendation {held})"
            )
        if desired < current and state.last_action_at is not None:
            since = now - as_utc(state.last_action_at)
            if since < policy.scale_in_cooldown:
                desired, reason = (
                    current,
                    (
                        f"no scale-in during the cooldown ({since} since the last action, "
                        f"{policy.scale_in_cooldown} required)"
                    ),
                )
    elif recommendation > current and state.last_scale_out_at is not None:
        since = now - as_utc(state.last_scale_out_at)
        if since < policy.scale_out_cooldown:
            desired, reason = (
                current,
                f"scale-out cooldown ({since} of {policy.scale_out_cooldown})",
            )

    # a collapse (the load far below its recent median: an outage, or a metric gone to zero)
    # is no reason to scale in: when the service or the metric comes back, the load does too
    collapsed = median > EPS and now_load < policy.collapse_fraction * median
    if collapsed and desired < current:
        desired, reason = (
            current,
            f"no scale-in: the load fell to {figure(now_load)}, under "
            f"{policy.collapse_fraction:.0%} of its median {figure(median)} over the last "
            f"{policy.burst_baseline} (an outage or a broken metric looks the same); scale-in "
            f"waits until the median follows it ({reason})",
        )
    # scale-in dead band: a small dip (or the headroom of the last scale-out) does not act
    if lo <= current <= hi and current - policy.scale_in_tolerance * current <= desired < current:
        desired, reason = (
            current,
            f"no scale-in: {desired} is within the {policy.scale_in_tolerance:.0%} dead band "
            f"below {current} ({reason})",
        )
    # guardrails: bounds (including the schedule's) and the maximum step per action
    if desired < lo:
        desired, reason = lo, f"{reason}; raised to the minimum {lo} ({bound_name})"
    if desired > hi:
        desired, reason = hi, f"{reason}; capped at the maximum {hi} ({bound_name})"
    if abs(desired - current) > policy.max_step:
        capped = current + policy.max_step * (1 if desired > current else -1)
        reason = f"{reason}; limited to {policy.max_step} instances per action ({desired} wanted)"
        desired = capped
    if desired == current and recommendation == current:
        reason = f"no change: {reason}"

    action: Literal["scale_out", "scale_in", "none"] = (
        "scale_out" if desired > current else "scale_in" if desired < current else "none"
    )
    new_state = replace(
        state,
        recommendations=recs,
        last_burst_at=last_burst_at,
        last_action_at=now if action != "none" else state.last_action_at,
        last_scale_out_at=now if action == "scale_out" else state.last_scale_out_at,
    )
    return Decision(
        current=current,
        desired=desired,
        action=action,
        reason=reason,
        demands=demands,
        load=now_load,
        forecast_peak=forecast_peak,
        bounds=(lo, hi),
        state=new_state,
    )


def held_to_group(decision: Decision, min_size: int, max_size: int) -> Decision:
    """`decision` held inside the group's own MinSize..MaxSize as AWS has them now (a scheduled
    action moves them: business hours raise the minimum), which AWS would refuse to pass;
    only ever closer to the current capacity, so the step and cooldown checks still hold."""
    if decision.action == "fail_static" or min_size <= decision.desired <= max_size:
        return decision
    if decision.desired < min_size:
        desired, held = min_size, f"MinSize {min_size}"
    else:
        desired, held = max_size, f"MaxSize {max_size}"
    action: Literal["scale_out", "scale_in", "none"] = (
        "scale_out"
        if desired > decision.current
        else "scale_in"
        if desired < decision.current
        else "none"
    )
    return replace(
        decision,
        desired=desired,
        action=action,
        reason=f"{decision.reason}; held to the group's {held}",
    )


def loosened_bounds(schedule: Schedule, min_size: int, max_size: int) -> list[str]:
    """How writing `schedule` on a group loosens the MinSize..MaxSize the group has (an
    operator's floor and ceiling, before perfops' actions manage them): the lowest minimum
    under its MinSize, the highest maximum over its MaxSize, each naming its window."""
    lows = [(w.min_capacity, w.name) for w in schedule.windows]
    highs = [(w.max_capacity, w.name) for w in schedule.windows]
    lowest, low_at = min([*lows, (schedule.off_hours_min, "off-hours")], key=lambda b: b[0])
    highest, high_at = max([*highs, (schedule.off_hours_max, "off-hours")], key=lambda b: b[0])
    out = []
    if lowest < min_size:
        out.append(f"lowers its MinSize {min_size} to {lowest} ({low_at})")
    if highest > max_size:
        out.append(f"raises its MaxSize {max_size} to {highest} ({high_at})")
    return out


def schedule_actions(schedule: Schedule) -> list[tuple[str, str, int, int, str]]:
    """The schedule as recurring Auto Scaling actions: (name, cron, min, max, zone).

    Each window starts with its own min/max and ends by restoring the off-hours bounds (not on
    a day another window starts as it ends: that window's start sets the bounds then); the
    cron fields are in the schedule's time zone. No action sets the desired capacity: AWS
    clamps the group's current desired into the new bounds, so a higher minimum scales out at
    once, and a lower one lets perfops' decisions scale in behind their guardrails
    (stabilization, cooldown, max_step) instead of dropping the group to the off-hours minimum
    at the window's end, or undoing a pre-warm at its start.
    """
    out = []
    for w in schedule.windows:
        days = ",".join(CRON_DAYS[d] for d in sorted(set(w.days)))
        # a window that ends as another starts (morning 08-12, afternoon 12-18) hands over:
        # an end action restoring the off-hours bounds at that moment would race the start
        # action, so it runs only on the days no window starts then (none: no end action)
        handed = {d for o in schedule.windows if o is not w and o.start == w.end for d in o.days}
        end_days = ",".join(CRON_DAYS[d] for d in sorted(set(w.days) - handed))
        lo, hi = w.min_capacity, w.max_capacity
        out.append(
            (
                f"perfops-{w.name}-start",
                f"{w.start.minute} {w.start.hour} * * {days}",
                lo,
                hi,
                schedule.timezone,
            )
        )
        if not end_days:
            continue
        off_lo, off_hi = schedule.off_hours_min, schedule.off_hours_max
        out.append(
            (
                f"perfops-{w.name}-end",
                f"{w.end.minute} {w.end.hour} * * {end_days}",
                off_lo,
                off_hi,
                schedule.timezone,
            )
        )
    return out
