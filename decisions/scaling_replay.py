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
at the setting as it is, and so does a policy whose training part is too short to back-test
(less than two days; `untuned` says why), as `scale_predictively` runs a group's base policy
until `tune_scaling` has tuned it; `retune="7D"` re-tunes every 7 days during the replay on
the load it has observed, as `tune_scaling` does in production. The replay machinery itself lives in
`decisions.scaling_simulation`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from decisions.scaling_report import LoadQuery
from decisions.scaling_simulation import (
    Env,
    ForecastPolicy,
    ForecastTrack,
    HpaTargetTracking,
    Obs,
    Oracle,
    ReplayPolicy,
    ReplayResult,
    ScheduledFloor,
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
    TUNING_WINDOW,
    Candidate,
    Choice,
    Tuning,
    TuningError,
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
    "ScheduledFloor",
    "ScheduledPeak",
    "ThresholdStep",
    "backtest",
    "forecast_errors",
    "horizon_forecasts",
    "make_env",
    "simulate",
]


RETUNE_LOOKBACK = LoadQuery().lookback  # what a re-tuning reads, as `tune_scaling` does


class PerfopsPolicy:
    """perfops on the harness' interface: tuned on the training part (past only), then the
    chosen policy. `track` / `tuning`: a forecast pass and a back-test already made on the same
    trace (a benchmark sweeping the dial reuses them; they read the same past); `cands`: the
    candidates to tune over (default: `decisions.scaling_tuning.candidates()`).

    `retune` (e.g. "7D"): re-tune every so often during the replay, as `tune_scaling` does in
    production: at the end of step t = start + k x retune it back-tests the last 14 days of the
    load it has observed (steps ..t, read from the decision's own observation; the lookback,
    35 days, sizes a schedule), picks again at the same risk target and runs that choice from
    the next decision. `tunings`: those back-tests by the step they were made at, shared by the
    dial's settings (each reads only the past of its step)."""

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
        retune: str | pd.Timedelta | None = None,
        tunings: dict[int, Tuning] | None = None,
        retune_window: str | pd.Timedelta = TUNING_WINDOW,
        keep_band: float | None = None,
        **overrides: Any,
    ) -> None:
        self.target, self.quantile, self.risk, self.tune = target, quantile, risk, tune
        self.cands = cands
        self.retune = pd.Timedelta(retune) if retune is not None else None
        self.retune_window = pd.Timedelta(retune_window)
        self.keep_band = keep_band
        self.tunings: dict[int, Tuning] = tunings if tunings is not None else {}
        self.choices: list[tuple[int, Choice]] = []
        self.track, self.tuning, self.overrides = track, tuning, overrides
        self.choice: Choice | None = None
        self.untuned: str | None = None  # why the policy runs untuned, when tuning was asked
        self.inner: ReplayPolicy
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
        self.every = self._every(env) if self.tune else 0  # an untuned policy never re-tunes
        self.next_tune = env.start - 1 + self.every if self.every else n
        self.choice, self.untuned, self.choices = None, None, []
        if not self.tune:
            self._run_base(env)
            return
        train = env.series.iloc[: env.start]
        cands = list(self.cands) if self.cands is not None else candidates()
        legacy = self.risk is None and self.target is not None
        if legacy and self._setting(env) not in cands:
            cands.append(self._setting(env))
        self.risk_pct = self.risk if self.risk is not None else DEFAULT_RISK_PCT
        self.all_cands = cands
        self.qs = tuple(sorted({c.quantile or 0.9 for c in cands if not c.simple}))
        if self.tuning is None or (legacy and self.tuning.row(self._setting(env)) is None):
            try:
                self.tuning = self._backtest(train)
            except TuningError as exc:  # too little history: the base policy, as in production
                self._not_tuned(exc)
                self._run_base(env)
                return
        if legacy:
            row = self.tuning.row(self._setting(env))
            assert row is not None
            self.risk_pct = row.under_pct
        self.choice = pick(self.tuning, self.risk_pct)
        self.choices = [(env.start - 1, self.choice)]
        self.inner = replay_policy(
            self.choice.candidate, sizing=train, track=self.track, quantiles=self.qs
        )
        self.inner.reset(env)

    def _run_base(self, env: Any) -> None:
        """Run perfops' forecast policy at the policy's own setting (no back-test)."""
        setting = self._setting(env)
        self.inner = ForecastPolicy(
            setting.target, self.quantile, track=self.track, **self.overrides
        )
        self.inner.reset(env)

    def _every(self, env: Any) -> int:
        """Steps between re-tunings (0: never)."""
        if self.retune is None:
            return 0
        step = pd.Timedelta(env.series.index[1] - env.series.index[0])
        return max(1, round(self.retune / step))

    def retune_steps(self, env: Any) -> list[int]:
        """The steps at whose end the policy re-tunes (none without `retune`)."""
        every = self._every(env)
        if not every:
            return []
        return list(range(env.start - 1 + every, len(env.series) - 1, every))

    def tuned_at(self, t: int, demand: np.ndarray) -> Tuning:
        """The back-test made at the end of step t on `demand` = the load of steps 0..t
        (memoised in `tunings`, shared by the dial's settings)."""
        if t not in self.tunings:
            assert len(demand) == t + 1, "a re-tuning reads the observed steps only"
            history = self._observed(demand)
            self.tunings[t] = self._backtest(
                history, window=self.retune_window, sizing=self._lookback(history)
            )
        return self.tunings[t]

    def _backtest(self, history: pd.Series, **extra: Any) -> Tuning:
        """The group's back-test of `history` over the candidates, on the trace's capacity,
        delay and bounds, reusing the policy's forecast pass."""
        env = self.env
        return tuning_backtest(
            history,
            capacity=env.capacity,
            delay=env.delay,
            min_capacity=env.min_inst,
            max_capacity=env.max_inst,
            cands=self.all_cands,
            track=self.track,
            **extra,
        )

    def _observed(self, demand: np.ndarray) -> pd.Series:
        """The load of the steps observed so far (0..len(demand) - 1), on the trace's times."""
        return pd.Series(demand, index=self.env.series.index[: len(demand)], dtype=float)

    @staticmethod
    def _lookback(history: pd.Series) -> pd.Series:
        """What `tune_scaling` reads of a group's history (a schedule is sized from it)."""
        step = pd.Timedelta(history.index[1] - history.index[0])
        return history.iloc[-int(RETUNE_LOOKBACK / step) :]

    def plan(self, env: Any) -> list[Choice]:
        """The choice of every tuning this policy makes on `env` (the reset's, then each
        re-tuning's, each from the load observed up to its step): what a replay will run."""
        self.reset(env)
        y = np.asarray(env.demand, dtype=float)
        out = [self.choice] if self.choice is not None else []  # none: untuned at first
        for t in self.retune_steps(env):
            tuning = self._tuning_at(t, y[: t + 1])
            if tuning is not None:
                out.append(self._next_choice(out[-1] if out else None, tuning))
        return out

    def _tuning_at(self, t: int, demand: np.ndarray) -> Tuning | None:
        """`tuned_at`, or None (and `untuned` says why) while the history is too short."""
        try:
            return self.tuned_at(t, demand)
        except TuningError as exc:
            self._not_tuned(exc)
            return None

    def _not_tuned(self, exc: TuningError) -> None:
        self.untuned = f"not tuned ({exc}): the base policy, {self._setting(self.env).label}"

    def _next_choice(self, previous: Choice | None, tuning: Tuning) -> Choice:
        """The re-tuning's choice (`previous`: the running one, None while untuned); with
        `keep_band` b, the running choice is kept while its share of under-provisioned steps on
        the recent back-test stays within 2^-b..2^b x the risk target (a fixed setting lets the
        risk float with the load, which is cheaper than re-aiming every setting at the target)."""
        choice = pick(tuning, self.risk_pct)
        if previous is None or self.keep_band is None or choice.candidate == previous.candidate:
            return choice
        row = tuning.row(previous.candidate)
        if row is None:
            return choice
        lo, hi = self.risk_pct * 2.0**-self.keep_band, self.risk_pct * 2.0**self.keep_band
        if lo - 1e-9 <= row.under_pct <= hi + 1e-9:
            return replace(
                choice,
                row=row,
                reason=f"kept: {row.candidate.label} is {row.under_pct:.2f} % under on the "
                f"recent history, within {lo:.2g}-{hi:.2g} %; {choice.reason}",
            )
        return choice

    def _switch(self, obs: Any) -> None:
        t = obs.t
        y = np.asarray(obs.demand, dtype=float)
        tuning = self._tuning_at(t, y)
        if tuning is None:
            return  # the base policy runs on
        previous = self.choice
        choice = self._next_choice(previous, tuning)
        self.choices.append((t, choice))
        self.choice, self.untuned = choice, None
        if (
            previous is not None
            and choice.candidate == previous.candidate
            and choice.candidate.family != "scheduled_p99"
        ):
            return  # the same policy runs on, its state kept
        sizing = self._lookback(self._observed(y))
        inner = replay_policy(choice.candidate, sizing=sizing, track=self.track, quantiles=self.qs)
        inner.reset(self.env)
        if isinstance(inner, ForecastPolicy) and isinstance(self.inner, ForecastPolicy):
            inner.state = self.inner.state  # the group's state (cooldowns, recommendations)
        self.inner = inner

    def decide(self, obs: Any) -> int:
        if obs.t >= self.next_tune:
            self._switch(obs)
            self.next_tune += self.every
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
