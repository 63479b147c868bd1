"""Replaying a load trace against scaling policies (back-test): pure, no I/O, no Prefect.

The actuation model is the one of ../shared/bench/scaling_eval.py, so numbers compare: at the
end of step t a policy sees the load up to t, the fleet's utilisation, serving and launching
instances, and returns a desired fleet size clamped to [min, max]; new instances are billed from
t+1 and serve from t+1+D (D = provisioning delay in steps); scale-in takes effect at t+1,
launching instances are cancelled before serving ones are terminated. A step is
under-provisioned when load > capacity x serving instances.

`PerfopsPolicy` is perfops' policy engine (`decisions.scaling_policy.decide` with
`decisions.forecasting`) behind the harness' `reset(env)` / `decide(obs)` interface; it runs in
the harness as `--policy decisions.scaling_replay:PerfopsPolicy` (the old path
`tasks.scaling_replay:PerfopsPolicy` still works) and here.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd

from decisions import forecasting
from decisions.scaling_policy import Observation, ScalingPolicy, ScalingState, decide

EPS = 1e-9


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


class PerfopsPolicy:
    """perfops' combined policy (predictive + target tracking + step thresholds, burst-aware
    scale-in) on the harness' interface. `target` overrides the env's target utilisation."""

    name = "perfops"

    def __init__(self, target: float | None = None, quantile: float = 0.90, **overrides: Any):
        self.target, self.quantile, self.overrides = target, quantile, overrides
        if target is not None:
            self.name = f"perfops@{round(100 * target)}%"

    def reset(self, env: Any) -> None:
        self.env = env
        step = pd.Timedelta(env.series.index[1] - env.series.index[0])
        settings: dict[str, Any] = dict(
            min_capacity=env.min_inst,
            max_capacity=env.max_inst,
            capacity_per_instance=env.capacity,
            target_utilization=self.target or env.target,
            forecast_quantile=self.quantile,
            boot_time=(step * env.delay).to_pytimedelta(),
            step=step.to_pytimedelta(),
            max_step=env.max_inst,
            scale_in_cooldown=timedelta(0),
        )
        settings.update(self.overrides)
        self.policy = ScalingPolicy(**settings)
        self.state = ScalingState()
        self.step = step
        self.keep = int(forecasting.MAX_HISTORY / step) + 1
        self.index = env.series.index
        self._q_at = -(10**9)
        self.refresh = max(1, int(pd.Timedelta("1h") / step))

    def decide(self, obs: Any) -> int:
        y = np.asarray(obs.demand[-self.keep :], dtype=float)
        horizon = self.policy.horizon
        mean, _ = forecasting._ensemble(y, self.step, horizon)
        if obs.t - self._q_at >= self.refresh:  # a week's forecast errors: refreshed hourly
            self._errors = forecasting.peak_errors(y, self.step, horizon)
            self._q_at = obs.t
        q = forecasting.error_quantile(self._errors, float(mean.max()), self.quantile)
        now = self.index[obs.t].to_pydatetime().replace(tzinfo=UTC)
        observation = Observation(
            now=now,
            load=y,
            last_load_at=now,
            current=obs.total,
            ready=obs.ready,
            utilization=obs.util,
            forecast_upper=mean * q,
            forecast_mean=mean,
        )
        decision = decide(self.policy, observation, self.state)
        self.state = decision.state
        return decision.desired


class HpaTargetTracking:
    """Kubernetes HPA: desired = ceil(ready x util / target), 10 % tolerance, immediate
    scale-out, scale-in to the highest recommendation of the stabilization window."""

    def __init__(self, target: float = 0.70, down_window: str = "5min") -> None:
        self.target, self.down_window = target, down_window
        self.name = f"hpa@{round(100 * target)}%"

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
    """AWS step scaling: > 80 % for 3 min adds 10/20/30 %, < 30 % for 15 min removes, 300 s
    cooldown, no repeated scale-out while instances warm up."""

    name = "threshold"

    def __init__(self, out_thr: float = 0.80, in_thr: float = 0.30) -> None:
        self.out_thr, self.in_thr = out_thr, in_thr

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


class Oracle:
    """Knows the next D+1 steps (reads the future on purpose): the physical limit."""

    name = "oracle"

    def reset(self, env: Any) -> None:
        self.env = env

    def decide(self, obs: Any) -> int:
        d = self.env.demand[obs.t + 1 : obs.t + 1 + self.env.horizon]
        return int(self.env.need(d.max(), 1.0))


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
    for i, t in enumerate(range(start, n)):
        while pending and pending[0][0] <= t:
            ready += pending.popleft()[1]
        n_pend = sum(c for _, c in pending)
        ready_arr[i], billed_arr[i] = ready, ready + n_pend
        util_arr[i] = d[t] / (cap * ready)
        if t == n - 1:
            break
        obs = Obs(t, env.series.index[t], d[: t + 1], util_arr[: i + 1], ready, n_pend, env)
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


def horizon_forecasts(env: Env) -> np.ndarray:
    """perfops' forecast of load D+1 steps ahead, made at every evaluated step."""
    y, step, h = env.demand, env.step, env.horizon
    keep = int(forecasting.MAX_HISTORY / step) + 1
    out = np.full(len(y) - env.start, np.nan)
    for i, t in enumerate(range(env.start, len(y) - 1)):
        mean, _ = forecasting._ensemble(y[max(0, t + 1 - keep) : t + 1], step, h)
        out[i] = mean[-1]
    return out


def summarize(env: Env, result: ReplayResult, oracle_cost: float) -> dict[str, Any]:
    """One result row: % steps under-provisioned, % above 80 %, instance-hours x oracle, actions."""
    step_h = env.step / pd.Timedelta("1h")
    cost = float(result.billed.sum() * step_h)
    return {
        "policy": result.name,
        "under_pct": float(100 * np.mean(result.util > 1.0 + EPS)),
        "above_80_pct": float(100 * np.mean(result.util > 0.80 + EPS)),
        "cost_x_oracle": cost / oracle_cost if oracle_cost else math.nan,
        "instance_hours": cost,
        "actions": int(result.actions),
        "ms_per_step": 1e3 * result.decide_seconds,
    }


def backtest(env: Env, policies: list[ReplayPolicy] | None = None) -> pd.DataFrame:
    """perfops vs threshold steps vs HPA vs the oracle on one trace; one row per policy."""
    policies = policies or [PerfopsPolicy(), ThresholdStep(), HpaTargetTracking(env.target)]
    oracle = simulate(env, Oracle())
    oracle_cost = float(oracle.billed.sum() * (env.step / pd.Timedelta("1h")))
    rows = [summarize(env, simulate(env, p), oracle_cost) for p in policies]
    rows.append(summarize(env, oracle, oracle_cost))
    frame = pd.DataFrame(rows).set_index("policy")
    mape, wape = forecast_errors(env, horizon_forecasts(env))
    frame["mape_pct"] = [mape if name.startswith("perfops") else math.nan for name in frame.index]
    frame["wape_pct"] = [wape if name.startswith("perfops") else math.nan for name in frame.index]
    return frame
