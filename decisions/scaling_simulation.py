"""Replaying a load trace against scaling policies, step by step: pure, no I/O, no Prefect.

The actuation model is the one of ../shared/bench/scaling_eval.py, so numbers compare: at the
end of step t a policy sees the load up to t, the fleet's utilisation, serving and launching
instances, and returns a desired fleet size clamped to [min, max]; new instances are billed from
t+1 and serve from t+1+D (D = provisioning delay in steps); scale-in takes effect at t+1,
launching instances are cancelled before serving ones are terminated. A step is
under-provisioned when load > capacity x serving instances.

The policies here are the candidates a tuning back-test (`decisions.scaling_tuning`) compares:
the simple families as the harness defines them (HPA target tracking, AWS step scaling, a
business-hours schedule sized from the history's p99; perfops runs the schedule as a floor with
target tracking above it, `ScheduledFloor`) and `ForecastPolicy`, perfops' policy
engine (`decisions.scaling_policy.decide` on `decisions.forecasting`'s forecast and calibrated
margin). `ForecastTrack` keeps the forecasts a replay has made, so several settings replay on one
forecast pass and the margin is calibrated on the forecasts that were really made.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from decisions import forecasting
from decisions.scaling_policy import Observation, ScalingPolicy, ScalingState, decide

EPS = 1e-9
MarginKind = Literal["additive", "ratio"]


@dataclass
class Env:
    """A trace and the capacity model (same fields as the harness' Env)."""

    series: pd.Series
    capacity: float
    delay: int
    start: int
    min_inst: int = 2
    max_inst: int = 100
    target: float = 0.70

    @property
    def demand(self) -> np.ndarray:
        return self.series.to_numpy(dtype=float)

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(self.series.index[1] - self.series.index[0])

    @property
    def horizon(self) -> int:
        return self.delay + 1

    def steps(self, duration: str | pd.Timedelta) -> int:
        return max(1, math.ceil(pd.Timedelta(duration) / self.step - EPS))

    def need(self, demand: float, util: float) -> int:
        return math.ceil(demand / (self.capacity * util) - EPS)


@dataclass
class Obs:
    t: int
    time: pd.Timestamp
    demand: np.ndarray
    util: np.ndarray
    ready: int
    pending: int
    env: Any

    @property
    def total(self) -> int:
        return self.ready + self.pending


class ReplayPolicy(Protocol):
    name: str

    def reset(self, env: Any) -> None: ...

    def decide(self, obs: Any) -> int: ...


def make_env(
    series: pd.Series,
    *,
    delay: str = "10min",
    train_days: float = 14.0,
    peak_instances: float = 20.0,
    peak_quantile: float = 0.999,
    min_inst: int = 2,
    max_inst: int = 100,
    target: float = 0.70,
) -> Env:
    """The harness' defaults: capacity so the p99.9 load needs 20 instances, 14 training days."""
    step = pd.Timedelta(series.index[1] - series.index[0])
    d = max(1, round(pd.Timedelta(delay) / step))
    days = (series.index[-1] - series.index[0]) / pd.Timedelta("1D")
    start = round(pd.Timedelta(days=min(train_days, days / 2)) / step)
    capacity = float(series.quantile(peak_quantile)) / peak_instances
    if capacity <= 0:
        raise ValueError("the trace's load is zero at its peak quantile: nothing to size for")
    return Env(series, capacity, d, start, min_inst, max_inst, target)


# --- the simple families (the harness' definitions) -------------------------------------------


class HpaTargetTracking:
    """Kubernetes HPA: desired = ceil(ready x util / target), 10 % tolerance, immediate
    scale-out, scale-in to the highest recommendation of the stabilization window."""

    def __init__(self, target: float = 0.70, down_window: str = "5min") -> None:
        self.target, self.down_window = target, down_window
        slow = pd.Timedelta(down_window) != pd.Timedelta("5min")
        suffix = f"/down{int(pd.Timedelta(down_window).total_seconds() // 60)}m" if slow else ""
        self.name = f"hpa@{round(100 * target)}%{suffix}"

    def reset(self, env: Any) -> None:
        self.window = pd.Timedelta(self.down_window) / env.step
        self.recs: deque[tuple[int, int]] = deque()

    def decide(self, obs: Any) -> int:
        total = obs.total
        wanted = obs.ready * obs.util[-1] / self.target
        rec = total if abs(wanted / total - 1.0) <= 0.10 else math.ceil(wanted - EPS)
        self.recs.append((obs.t, rec))
        while obs.t - self.recs[0][0] > self.window + EPS:
            self.recs.popleft()
        return rec if rec >= total else min(total, max(r for _, r in self.recs))


class ThresholdStep:
    """AWS step scaling: above `out_thr` for 3 min adds 10/20/30 %, below 30 % for 15 min
    removes, 300 s cooldown, no repeated scale-out while instances warm up."""

    def __init__(self, out_thr: float = 0.80, in_thr: float = 0.30) -> None:
        self.out_thr, self.in_thr = out_thr, in_thr
        self.name = "threshold" if out_thr == 0.80 else f"threshold@{round(100 * out_thr)}%"

    def reset(self, env: Any) -> None:
        self.k_out, self.k_in = env.steps("3min"), env.steps("15min")
        self.cool = math.ceil(pd.Timedelta("300s") / env.step - EPS)
        self.last = -(10**9)

    @staticmethod
    def _pct(distance: float) -> float:
        return 0.10 if distance < 0.10 else 0.20 if distance < 0.20 else 0.30

    def decide(self, obs: Any) -> int:
        u, total = obs.util, obs.total
        if obs.t - self.last < self.cool:
            return int(total)
        desired = total
        if len(u) >= self.k_out and np.all(u[-self.k_out :] > self.out_thr):
            pct = self._pct(u[-1] - self.out_thr)
            if obs.pending:
                desired = max(total, obs.ready + max(1, math.floor(obs.ready * pct)))
            else:
                desired = total + max(1, math.floor(total * pct))
        elif not obs.pending and len(u) >= self.k_in and np.all(u[-self.k_in :] < self.in_thr):
            desired = total - max(1, math.floor(total * self._pct(self.in_thr - u[-1])))
        if desired != total:
            self.last = obs.t
        return int(desired)


def business_hours(index: pd.DatetimeIndex) -> np.ndarray:
    """Mon-Fri 09:00-17:00 in the index's clock (UTC)."""
    return np.asarray((index.hour >= 9) & (index.hour < 17) & (index.day_of_week < 5))


def schedule_sizes(
    history: pd.Series, capacity: float, target: float, quantile: float = 0.99
) -> tuple[int, int]:
    """Instances for business hours and off hours: each window's load `quantile` of
    `history` at `target` utilisation (the harness' scheduled-p99)."""
    bh = business_hours(pd.DatetimeIndex(history.index))

    def need(values: pd.Series) -> int:
        return math.ceil(float(values.quantile(quantile)) / (capacity * target) - EPS)

    return (
        need(history[bh] if bh.any() else history),
        need(history[~bh] if (~bh).any() else history),
    )


class ScheduledPeak:
    """Scheduled scaling: a business-hours fleet and an off-hours fleet, each sized from the
    p99 of the load in that window of `sizing` (default: the env's training part) at the
    target utilisation; it launches D steps early."""

    def __init__(
        self, target: float = 0.70, quantile: float = 0.99, sizing: pd.Series | None = None
    ) -> None:
        self.target, self.quantile, self.sizing = target, quantile, sizing
        self.name = f"scheduled-p{100 * quantile:g}@{round(100 * target)}%"

    def reset(self, env: Any) -> None:
        self.env = env
        sizing = self.sizing if self.sizing is not None else env.series.iloc[: env.start]
        self.n_bh, self.n_off = schedule_sizes(sizing, env.capacity, self.target, self.quantile)
        idx = env.series.index
        future = pd.date_range(idx[-1] + env.step, periods=env.horizon + 1, freq=env.step)
        self.plan = np.where(business_hours(idx.append(future)), self.n_bh, self.n_off)

    def decide(self, obs: Any) -> int:
        return int(self.plan[obs.t + 1 : obs.t + 1 + self.env.horizon].max())


class ScheduledFloor:
    """perfops' scheduled family: `ScheduledPeak`'s fleet as the floor, target tracking at the
    same target above it (as scheduled actions setting the minimum under a target-tracking
    policy run on AWS): the schedule's cost while the load stays within what it was sized
    for, and no day-long under-provisioning when the load outgrows it (a level shift)."""

    def __init__(
        self, target: float = 0.70, quantile: float = 0.99, sizing: pd.Series | None = None
    ) -> None:
        self.schedule = ScheduledPeak(target, quantile, sizing)
        self.tracking = HpaTargetTracking(target)
        self.name = f"{self.schedule.name}+hpa"

    def reset(self, env: Any) -> None:
        self.schedule.reset(env)
        self.tracking.reset(env)

    def decide(self, obs: Any) -> int:
        return max(self.schedule.decide(obs), self.tracking.decide(obs))


class Oracle:
    """Knows the next D+1 steps (reads the future on purpose): the physical limit."""

    name = "oracle"

    def reset(self, env: Any) -> None:
        self.env = env

    def decide(self, obs: Any) -> int:
        d = self.env.demand[obs.t + 1 : obs.t + 1 + self.env.horizon]
        return int(self.env.need(d.max(), 1.0))


# --- perfops' forecast policy -------------------------------------------------------------------


class ForecastTrack:
    """The forecasts a replay has made (one row per origin; NaN = not made yet) and the realised
    peaks after them, so the margin at t is calibrated on forecasts made before t whose
    outcome is known at t, and several policy settings share one forecast pass."""

    def __init__(self, step: pd.Timedelta, horizon: int, n: int) -> None:
        self.step, self.horizon, self.n = pd.Timedelta(step), horizon, n
        self.mean = np.full((n, horizon), np.nan)
        self.peak = np.full(n, np.nan)
        self.weights: dict[int, dict[str, float]] = {}
        self.window = int(forecasting.QUANTILE_WINDOW / self.step)
        self.min_samples = max(1, int(pd.Timedelta("1D") / self.step))
        self._errors: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        self._margins: dict[tuple[int, str, tuple[float, ...]], np.ndarray] = {}

    def fill(self, y: np.ndarray, first: int, last: int) -> None:
        """Forecast from origins first..last (y must reach `last`; nothing later is read)."""
        first = max(first, 0)
        if last < first:
            return
        fc = forecasting.forecast_pass(y, self.step, self.horizon, first, last, self.weights)
        self.mean[first : last + 1] = fc
        self.peak[first : last + 1] = fc.max(axis=1)

    def ensure(self, y: np.ndarray, t: int) -> np.ndarray:
        """The forecast made at t (computed now from y[..t] if it was not made yet)."""
        if not np.isfinite(self.peak[t]):
            self.fill(y, t, t)
        return self.mean[t]

    def margins(self, y: np.ndarray, t: int, qs: tuple[float, ...], kind: MarginKind) -> np.ndarray:
        """The `qs` margins at t (additive: load units; ratio: multipliers) for the forecast
        peak at t, from the forecasts of the last QUANTILE_WINDOW whose realised peak is known
        (y[..t]). The errors are gathered once per hour (at r = t - t % refresh, like the
        weights), the quantiles taken at t's own level."""
        k = forecasting.weight_refresh_steps(self.step)
        r = t - t % k
        key = (r, kind)
        if key not in self._errors:
            hi = r - self.horizon  # the last origin whose whole horizon is observed at r
            lo = max(0, hi - self.window + 1)
            if hi < lo:
                self._errors[key] = (np.empty(0), np.empty(0))
            else:
                fpeak = self.peak[lo : hi + 1]
                windows = np.lib.stride_tricks.sliding_window_view(
                    np.asarray(y[lo + 1 : hi + 1 + self.horizon], dtype=float), self.horizon
                )
                actual = windows.max(axis=1)
                ok = np.isfinite(fpeak)
                self._errors[key] = (fpeak[ok], actual[ok])
        fpeak, actual = self._errors[key]
        memo = (t, kind, qs)
        if memo in self._margins:
            return self._margins[memo]
        peak = float(self.peak[t])
        if kind == "ratio":
            out = forecasting.ratio_quantiles(fpeak, actual, peak, qs, self.min_samples)
        else:
            out = forecasting.margin_quantiles(fpeak, actual, peak, qs, self.min_samples)
        self._margins[memo] = out
        return out

    def upper(self, mean: np.ndarray, margin: float, kind: MarginKind) -> np.ndarray:
        if kind == "ratio":
            return np.asarray(mean, dtype=float) * margin
        return forecasting.upper_bound(mean, margin)


class ForecastPolicy:
    """perfops' policy engine (predictive + target tracking + burst-aware scale-in) on the
    harness' interface, at one setting: target utilisation, forecast quantile and margin kind.
    A shared `track` (same trace) lets several settings reuse one forecast pass."""

    def __init__(
        self,
        target: float = 0.70,
        quantile: float = 0.90,
        margin: MarginKind = "additive",
        track: ForecastTrack | None = None,
        quantiles: tuple[float, ...] | None = None,
        **overrides: Any,
    ) -> None:
        self.target, self.quantile, self.margin = target, quantile, margin
        self.track, self.overrides = track, overrides
        self.quantiles = quantiles or (quantile,)
        kind = "" if margin == "additive" else "/ratio"
        self.name = f"forecast@{round(100 * target)}%/p{100 * quantile:g}{kind}"

    def reset(self, env: Any) -> None:
        self.env = env
        step = pd.Timedelta(env.series.index[1] - env.series.index[0])
        settings: dict[str, Any] = dict(
            min_capacity=env.min_inst,
            max_capacity=env.max_inst,
            capacity_per_instance=env.capacity,
            target_utilization=self.target,
            forecast_quantile=self.quantile,
            boot_time=(step * env.delay).to_pytimedelta(),
            step=step.to_pytimedelta(),
            max_step=env.max_inst,
            scale_in_cooldown=timedelta(0),
        )
        settings.update(self.overrides)
        self.policy = ScalingPolicy(**settings)
        self.state = ScalingState()
        index = pd.DatetimeIndex(env.series.index)
        self.times = (index.tz_localize(UTC) if index.tz is None else index).to_pydatetime()
        n = len(env.series)
        if self.track is None or self.track.n < n or self.track.horizon != self.policy.horizon:
            self.track = ForecastTrack(step, self.policy.horizon, n)
            # calibration from the start: the forecasts of the week before (past data only)
            y = env.demand[: env.start]
            self.track.fill(y, env.start - self.track.window - self.track.horizon, env.start - 1)
        self.q_index = self.quantiles.index(self.quantile)
        # decide() reads the current load, the burst baseline and target tracking's inputs
        self.keep = max(int(pd.Timedelta("1D") / step), int(self.policy.burst_baseline / step)) + 2

    def decide(self, obs: Any) -> int:
        track = self.track
        assert track is not None
        y = np.asarray(obs.demand, dtype=float)
        mean = track.ensure(y, obs.t)
        margin = float(track.margins(y, obs.t, self.quantiles, self.margin)[self.q_index])
        now = self.times[obs.t]
        observation = Observation(
            now=now,
            load=y[-self.keep :],
            last_load_at=now,
            current=obs.total,
            ready=obs.ready,
            utilization=obs.util,
            forecast_upper=track.upper(mean, margin, self.margin),
            forecast_mean=mean,
        )
        decision = decide(self.policy, observation, self.state)
        self.state = decision.state
        return decision.desired


# --- the replay ---------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    name: str
    ready: np.ndarray
    billed: np.ndarray
    util: np.ndarray
    actions: int
    decide_seconds: float
    forecasts: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def simulate(env: Env, policy: ReplayPolicy) -> ReplayResult:
    """Replay `env`'s trace against `policy` (the harness' actuation model)."""
    d, cap, delay = env.demand, env.capacity, env.delay
    n, start = len(d), env.start
    policy.reset(env)
    ready = min(
        max(env.need(d[start : start + env.horizon + 1].max(), env.target), env.min_inst),
        env.max_inst,
    )
    pending: deque[list[int]] = deque()
    m = n - start
    ready_arr, billed_arr = np.zeros(m, int), np.zeros(m, int)
    util_arr = np.zeros(m)
    actions, spent = 0, 0.0
    index = list(env.series.index[start:])
    for i, t in enumerate(range(start, n)):
        while pending and pending[0][0] <= t:
            ready += pending.popleft()[1]
        n_pend = sum(c for _, c in pending)
        ready_arr[i], billed_arr[i] = ready, ready + n_pend
        util_arr[i] = d[t] / (cap * ready)
        if t == n - 1:
            break
        obs = Obs(t, index[i], d[: t + 1], util_arr[: i + 1], ready, n_pend, env)
        t0 = time.perf_counter()
        desired = min(max(int(policy.decide(obs)), env.min_inst), env.max_inst)
        spent += time.perf_counter() - t0
        total = ready + n_pend
        if desired > total:
            pending.append([t + 1 + delay, desired - total])
            actions += 1
        elif desired < total:
            cut = total - desired
            while cut and pending:
                take = min(cut, pending[-1][1])
                pending[-1][1] -= take
                cut -= take
                if pending[-1][1] == 0:
                    pending.pop()
            ready -= cut
            actions += 1
    return ReplayResult(
        policy.name, ready_arr, billed_arr, util_arr, actions, spent / max(m - 1, 1)
    )


def oracle_cost(env: Env) -> float:
    """Instance-hours of the oracle (what every cost is divided by)."""
    return float(simulate(env, Oracle()).billed.sum() * (env.step / pd.Timedelta("1h")))


def summarize(env: Env, result: ReplayResult, oracle: float) -> dict[str, Any]:
    """One result row: % steps under-provisioned, % above 80 %, instance-hours x oracle, actions."""
    step_h = env.step / pd.Timedelta("1h")
    cost = float(result.billed.sum() * step_h)
    return {
        "policy": result.name,
        "under_pct": float(100 * np.mean(result.util > 1.0 + EPS)),
        "above_80_pct": float(100 * np.mean(result.util > 0.80 + EPS)),
        "cost_x_oracle": cost / oracle if oracle else math.nan,
        "instance_hours": cost,
        "actions": int(result.actions),
        "ms_per_step": 1e3 * result.decide_seconds,
    }


def horizon_forecasts(env: Env) -> np.ndarray:
    """perfops' forecast of load D+1 steps ahead, made at every evaluated step."""
    y, h = env.demand, env.horizon
    fc = forecasting.forecast_pass(y, env.step, h, env.start, len(y) - 1)
    return np.asarray(fc[:, -1], dtype=float)


def forecast_errors(env: Env, forecasts: np.ndarray) -> tuple[float, float]:
    """MAPE (steps with load > 0) and WAPE, in %, of the forecast D+1 steps ahead."""
    h, d = env.horizon, env.demand
    t = np.arange(env.start, len(d) - h)
    f, a = forecasts[t - env.start], d[t + h]
    ok = np.isfinite(f)
    f, a = f[ok], a[ok]
    pos = a > 0
    mape = float(100 * np.mean(np.abs(f[pos] - a[pos]) / a[pos])) if pos.any() else math.nan
    wape = float(100 * np.sum(np.abs(f - a)) / max(float(np.sum(a)), EPS))
    return mape, wape


# --- the simple families swept in lockstep (numpy over the settings) ----------------------------


@dataclass(frozen=True)
class SweepResult:
    """Per setting: % steps under-provisioned, instance-steps billed, actions."""

    under_pct: np.ndarray
    billed: np.ndarray
    actions: np.ndarray


def sweep_simple(
    env: Env,
    family: str,
    targets: tuple[float, ...],
    sizing: pd.Series | None = None,
) -> SweepResult:
    """Replay one simple family at every target at once (one pass, numpy over the targets):
    the same decisions and actuation as `simulate` with `HpaTargetTracking`, `ThresholdStep`
    or `ScheduledFloor` at each target, at a fraction of the cost."""
    if family not in ("target_tracking", "target_tracking_30m", "step", "scheduled_p99"):
        raise ValueError(f"no lockstep replay for the family {family!r}")
    d, cap, delay, start = env.demand, env.capacity, env.delay, env.start
    n, k = len(d), len(targets)
    u = np.asarray(targets, dtype=float)
    slots = delay + 2  # launches by the step they serve from (a ring)
    first = d[start : start + env.horizon + 1].max()
    ready = np.full(k, min(max(env.need(first, env.target), env.min_inst), env.max_inst))
    pend = np.zeros((k, slots), dtype=np.int64)
    billed = np.zeros(k, dtype=np.int64)
    under = np.zeros(k, dtype=np.int64)
    actions = np.zeros(k, dtype=np.int64)
    # family state
    tracking = family != "step"  # the schedule's floor tracks the target above it
    if tracking:
        window = pd.Timedelta("30min" if family.endswith("30m") else "5min") / env.step
        keep = math.floor(window + EPS) + 1
        recs = np.zeros((k, keep), dtype=np.int64)
    if family == "step":
        out_thr = np.minimum(u + 0.10, 1.0)
        in_thr = 0.30
        k_out, k_in = env.steps("3min"), env.steps("15min")
        cool = math.ceil(pd.Timedelta("300s") / env.step - EPS)
        last = np.full(k, -(10**9))
        above = np.zeros(k, dtype=np.int64)
        below = np.zeros(k, dtype=np.int64)
    elif family == "scheduled_p99":
        sizes = [
            schedule_sizes(
                sizing if sizing is not None else env.series.iloc[:start], cap, float(x), 0.99
            )
            for x in u
        ]
        idx = env.series.index
        future = pd.date_range(idx[-1] + env.step, periods=env.horizon + 1, freq=env.step)
        bh = business_hours(pd.DatetimeIndex(idx.append(future)))
        plan = np.where(
            bh[None, :],
            np.array([s[0] for s in sizes])[:, None],
            np.array([s[1] for s in sizes])[:, None],
        )
    for i, t in enumerate(range(start, n)):
        slot = t % slots
        ready = ready + pend[:, slot]
        pend[:, slot] = 0
        n_pend = pend.sum(axis=1)
        util = d[t] / (cap * ready)
        billed += ready + n_pend
        under += util > 1.0 + EPS
        if t == n - 1:
            break
        total = ready + n_pend
        if tracking:
            wanted = ready * util / u
            rec = np.where(
                np.abs(wanted / total - 1.0) <= 0.10, total, np.ceil(wanted - EPS).astype(np.int64)
            )
            recs[:, i % keep] = rec
            held = recs.max(axis=1) if i + 1 >= keep else recs[:, : i + 1].max(axis=1)
            desired = np.where(rec >= total, rec, np.minimum(total, held))
        if family == "step":
            above = np.where(util > out_thr, above + 1, 0)
            below = np.where(util < in_thr, below + 1, 0)
            desired = total.copy()
            free = t - last >= cool
            out = free & (above >= k_out)
            pct_out = _step_pct(util - out_thr)
            grow_pending = np.maximum(total, ready + np.maximum(1, np.floor(ready * pct_out)))
            grow = total + np.maximum(1, np.floor(total * pct_out))
            desired = np.where(out, np.where(n_pend > 0, grow_pending, grow), desired)
            inn = free & ~out & (n_pend == 0) & (below >= k_in)
            shrink = total - np.maximum(1, np.floor(total * _step_pct(in_thr - util)))
            desired = np.where(inn, shrink, desired).astype(np.int64)
            last = np.where(free & (desired != total), t, last)
        elif family == "scheduled_p99":
            desired = np.maximum(desired, plan[:, t + 1 : t + 1 + env.horizon].max(axis=1))
        desired = np.minimum(np.maximum(desired, env.min_inst), env.max_inst)
        up = desired > total
        pend[up, (t + 1 + delay) % slots] += (desired - total)[up]
        down = desired < total
        cut = np.where(down, total - desired, 0)
        for lag in range(delay + 1, 0, -1):  # cancel the newest launches first
            s = (t + lag) % slots
            take = np.minimum(cut, pend[:, s])
            pend[:, s] -= take
            cut -= take
        ready = ready - cut
        actions += up | down
    m = n - start
    return SweepResult(100.0 * under / m, billed, actions)


def _step_pct(distance: np.ndarray) -> np.ndarray:
    return np.where(distance < 0.10, 0.10, np.where(distance < 0.20, 0.20, 0.30))
