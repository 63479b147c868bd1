"""Replaying a load trace against perfops (back-test): pure, no I/O, no Prefect.

`PerfopsPolicy` is perfops as it runs a group, behind the harness' `reset(env)` / `decide(obs)`
interface: at `reset` it tunes itself on the trace's training part only (the steps before
`env.start`: `decisions.scaling_tuning.backtest` over the simple families and the forecast
grid, then `pick` at its risk target), and then runs the chosen policy on the steps it is scored
on. It runs in the harness as `--policy decisions.scaling_replay:PerfopsPolicy` (the old path
`tasks.scaling_replay:PerfopsPolicy` still works). Its risk dial is `risk` (the share of
under-provisioned steps, in %, the group accepts on its history); the old dial
`PerfopsPolicy(target=, quantile=)` still works: it asks for at most the risk that perfops'
forecast policy at that setting had on the training part. `tune=False` runs the forecast policy
at the setting as it is. The replay machinery itself lives in `decisions.scaling_simulation`.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from decisions.scaling_simulation import (
    Env,
    ForecastPolicy,
    ForecastTrack,
    HpaTargetTracking,
    Obs,
    Oracle,
    ReplayPolicy,
    ReplayResult,
    ScheduledPeak,
    ThresholdStep,
    forecast_errors,
    horizon_forecasts,
    make_env,
    oracle_cost,
    simulate,
    summarize,
)
from decisions.scaling_tuning import (
    DEFAULT_RISK_PCT,
    Candidate,
    Choice,
    Tuning,
    candidates,
    pick,
    replay_policy,
)
from decisions.scaling_tuning import (
    backtest as tuning_backtest,
)

__all__ = [
    "Env",
    "ForecastPolicy",
    "ForecastTrack",
    "HpaTargetTracking",
    "Obs",
    "Oracle",
    "PerfopsPolicy",
    "ReplayResult",
    "ScheduledPeak",
    "ThresholdStep",
    "backtest",
    "forecast_errors",
    "horizon_forecasts",
    "make_env",
    "simulate",
]


class PerfopsPolicy:
    """perfops on the harness' interface: tuned on the training part (past only), then the
    chosen policy. `track` / `tuning`: a forecast pass and a back-test already made on the same
    trace (a benchmark sweeping the dial reuses them; they read the same past); `cands`: the
    candidates to tune over (default: `decisions.scaling_tuning.candidates()`)."""

    name = "perfops"

    def __init__(
        self,
        target: float | None = None,
        quantile: float = 0.90,
        risk: float | None = None,
        tune: bool = True,
        track: ForecastTrack | None = None,
        tuning: Tuning | None = None,
        cands: list[Candidate] | None = None,
        **overrides: Any,
    ) -> None:
        self.target, self.quantile, self.risk, self.tune = target, quantile, risk, tune
        self.cands = cands
        self.track, self.tuning, self.overrides = track, tuning, overrides
        self.choice: Choice | None = None
        if risk is not None:
            self.name = f"perfops@risk{risk:g}%"
        elif target is not None:
            self.name = f"perfops@{round(100 * target)}%"

    def _setting(self, env: Any) -> Candidate:
        return Candidate("forecast", self.target or env.target, self.quantile, "additive")

    def reset(self, env: Any) -> None:
        self.env = env
        step = pd.Timedelta(env.series.index[1] - env.series.index[0])
        n = len(env.series)
        if self.track is None or self.track.n < n or self.track.horizon != env.horizon:
            self.track = ForecastTrack(step, env.horizon, n)
        if not self.tune:
            setting = self._setting(env)
            self.inner: ReplayPolicy = ForecastPolicy(
                setting.target, self.quantile, track=self.track, **self.overrides
            )
            self.inner.reset(env)
            return
        train = env.series.iloc[: env.start]
        cands = list(self.cands) if self.cands is not None else candidates()
        legacy = self.risk is None and self.target is not None
        if legacy and self._setting(env) not in cands:
            cands.append(self._setting(env))
        if self.tuning is None or (legacy and self.tuning.row(self._setting(env)) is None):
            self.tuning = tuning_backtest(
                train,
                capacity=env.capacity,
                delay=env.delay,
                min_capacity=env.min_inst,
                max_capacity=env.max_inst,
                cands=cands,
                track=self.track,
            )
        risk = self.risk if self.risk is not None else DEFAULT_RISK_PCT
        if legacy:
            row = self.tuning.row(self._setting(env))
            assert row is not None
            risk = row.under_pct
        self.choice = pick(self.tuning, risk)
        qs = tuple(sorted({c.quantile or 0.9 for c in cands if not c.simple}))
        self.inner = replay_policy(
            self.choice.candidate, sizing=train, track=self.track, quantiles=qs
        )
        self.inner.reset(env)

    def decide(self, obs: Any) -> int:
        return int(self.inner.decide(obs))


def backtest(env: Env, policies: list[ReplayPolicy] | None = None) -> pd.DataFrame:
    """perfops (tuned on the training part) vs threshold steps vs HPA vs the oracle on one
    trace; one row per policy."""
    policies = policies or [PerfopsPolicy(), ThresholdStep(), HpaTargetTracking(env.target)]
    oracle_result = simulate(env, Oracle())
    oracle = oracle_cost(env)
    rows = [summarize(env, simulate(env, p), oracle) for p in policies]
    rows.append(summarize(env, oracle_result, oracle))
    frame = pd.DataFrame(rows).set_index("policy")
    mape, wape = forecast_errors(env, horizon_forecasts(env))
    frame["mape_pct"] = [mape if name.startswith("perfops") else math.nan for name in frame.index]
    frame["wape_pct"] = [wape if name.startswith("perfops") else math.nan for name in frame.index]
    return frame
