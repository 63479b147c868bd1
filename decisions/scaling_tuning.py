"""Self-tuning by back-test: which scaling policy, at which setting, a group should run. Pure.

The group's own recent history (e.g. 14 days of 5-minute steps) is replayed, with the actuation
model of `decisions.scaling_simulation` (provisioning delay, billing from launch), through the
candidates: the simple families, each swept over target utilisations 20-100 % (HPA target
tracking with a 5- and a 30-minute scale-down window, AWS step scaling with its scale-out
threshold at target + 10 points, a business-hours schedule sized from the history's p99), and
perfops' forecast policy on a grid (forecast quantiles log-spaced in exceedance, a lower target
utilisation, the ratio margin) that shares one forecast pass. `pick` judges each family as the
goal does, by its cost curve (cost at a share of under-provisioned steps, interpolated over its
settings), read over a band around the group's risk target (from 1/sqrt(2) to sqrt(2) times it:
the share one fortnight gives a policy is often a third off, or half or twice, the share of the
weeks after it), takes the cheapest family and its cheapest setting that meets the target on the
history; a simple family wins ties (within 1 %), so a forecast is used only where it pays on
this group's history, and when none does, the choice says so: that is a result, not a failure.

The choice is made on the past only; `scaling_policy_for` turns it into the `ScalingPolicy` the
scaling flow runs until the next tuning.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import time as clock
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from decisions.scaling_policy import ScalingPolicy, Schedule, ScheduleWindow, StepThresholds
from decisions.scaling_simulation import (
    Env,
    ForecastPolicy,
    ForecastTrack,
    HpaTargetTracking,
    MarginKind,
    ReplayPolicy,
    ScheduledFloor,
    ThresholdStep,
    business_hours,
    oracle_cost,
    simulate,
    sweep_simple,
)

Family = Literal["target_tracking", "target_tracking_30m", "step", "scheduled_p99", "forecast"]
SIMPLE_FAMILIES: tuple[Family, ...] = (
    "target_tracking",
    "target_tracking_30m",
    "step",
    "scheduled_p99",
)
SIMPLE_TARGETS = tuple(round(0.20 + 0.05 * i, 2) for i in range(17))  # 0.20 .. 1.00
# the forecast policy's grid (each setting is a replay of decide() at every step): the
# forecast's upper bound at 100 % utilisation swept over the quantile (the efficient dial), its
# exceedance 1 - q log-spaced by sqrt(2) from 50 % to 0.55 % (p50 .. p99.45): the share of
# under-provisioned steps follows 1 - q, so the dial has a setting in every sqrt(2) band of
# risk, as `pick` reads a family (RISK_BAND), and its points on unseen weeks lie close enough for
# the curve between them to be the family's (with five quantiles, 1 % was read off a line
# between settings far either side of it: see docs/scaling.md); one at 80 % (target tracking's
# floor then adds headroom of its own), and the ratio margin
FORECAST_QUANTILES = tuple(round(1.0 - 0.5 * 2.0 ** (-k / 2), 3) for k in range(14))
FORECAST_GRID: tuple[tuple[float, float, MarginKind], ...] = (
    *((1.0, q, "additive") for q in FORECAST_QUANTILES),
    (0.8, 0.9, "additive"),
    *((1.0, q, "ratio") for q in (0.9, 0.95)),
)
DEFAULT_RISK_PCT = 1.0  # at most this share of the replayed steps under-provisioned
TIE = 0.01  # a forecast must be more than 1 % cheaper than the best simple policy to be used
# a family is judged by its cost over the risk levels target / sqrt(2) .. target x sqrt(2): the
# share of under-provisioned steps of one fortnight and of the weeks after it differ by a factor
# of 1.3 for half the (policy, trace) pairs of the corpus and by 2 or more for a quarter
RISK_BAND = 0.5
BAND_LEVELS = 5
WARMUP = pd.Timedelta("1D")  # the first day of a history only warms the policies up
TUNING_WINDOW = pd.Timedelta("14D")  # the steps replayed: at most the last 14 days

LABELS = {
    "target_tracking": "target tracking",
    "target_tracking_30m": "target tracking, 30 min scale-in",
    "step": "step scaling",
    "scheduled_p99": "scheduled p99 + target tracking",
    "forecast": "forecast",
}


class TuningError(ValueError):
    """The history cannot be back-tested (too short, no load)."""


@dataclass(frozen=True)
class Candidate:
    """One policy at one setting."""

    family: Family
    target: float
    quantile: float | None = None
    margin: MarginKind = "additive"

    @property
    def simple(self) -> bool:
        return self.family != "forecast"

    @property
    def label(self) -> str:
        text = f"{LABELS[self.family]} @ {self.target:.0%}"
        if self.family == "forecast":
            text += f", p{100 * (self.quantile or 0):g} {self.margin} margin"
        return text


def candidates(simple_targets: tuple[float, ...] = SIMPLE_TARGETS) -> list[Candidate]:
    """The simple families over `simple_targets`, then the forecast grid (FORECAST_GRID)."""
    out = [Candidate(f, u) for f in SIMPLE_FAMILIES for u in simple_targets]
    return out + [Candidate("forecast", u, q, m) for u, q, m in FORECAST_GRID]


def replay_policy(
    candidate: Candidate,
    *,
    sizing: pd.Series | None = None,
    track: ForecastTrack | None = None,
    quantiles: tuple[float, ...] | None = None,
) -> ReplayPolicy:
    """The candidate as a replay policy (`sizing`: the history a schedule is sized from)."""
    u = candidate.target
    if candidate.family == "target_tracking":
        return HpaTargetTracking(u)
    if candidate.family == "target_tracking_30m":
        return HpaTargetTracking(u, down_window="30min")
    if candidate.family == "step":
        return ThresholdStep(out_thr=min(u + 0.10, 1.0))
    if candidate.family == "scheduled_p99":
        return ScheduledFloor(u, 0.99, sizing=sizing)
    q = candidate.quantile or 0.90
    qs = quantiles if quantiles and q in quantiles else (q,)
    return ForecastPolicy(u, q, candidate.margin, track=track, quantiles=qs)


@dataclass(frozen=True)
class BacktestRow:
    candidate: Candidate
    under_pct: float
    cost_x_oracle: float
    actions: int


@dataclass(frozen=True)
class Tuning:
    """The back-test table of one history."""

    rows: tuple[BacktestRow, ...]
    start: pd.Timestamp
    end: pd.Timestamp
    steps: int
    seconds: float

    def row(self, candidate: Candidate) -> BacktestRow | None:
        return next((r for r in self.rows if r.candidate == candidate), None)


def backtest(
    history: pd.Series,
    *,
    capacity: float,
    delay: int,
    min_capacity: int = 2,
    max_capacity: int = 100,
    window: pd.Timedelta = TUNING_WINDOW,
    cands: list[Candidate] | None = None,
    track: ForecastTrack | None = None,
    sizing: pd.Series | None = None,
) -> Tuning:
    """Replay the last `window` of `history` (a regular series, oldest first) through every
    candidate; the steps before it (at least WARMUP) only warm the policies up. `track`: the
    forecasts already made on this history (same origins), to reuse; `sizing`: the history a
    schedule is sized from (default: `history`; a group's tuning reads its lookback)."""
    t0 = time.perf_counter()
    history = history.astype(float)
    if len(history) < 3:
        raise TuningError(f"a back-test needs a history; got {len(history)} points")
    step = pd.Timedelta(history.index[1] - history.index[0])
    warm = max(int(WARMUP / step), 2 * (delay + 1))
    start = max(warm, len(history) - int(window / step))
    if len(history) - start < int(pd.Timedelta("1D") / step):
        raise TuningError(
            f"a back-test needs at least two days of history; got {len(history) * step}"
        )
    if capacity <= 0 or not np.isfinite(capacity):
        raise TuningError(f"capacity per instance must be positive, got {capacity}")
    env = Env(history, capacity, delay, start, min_capacity, max_capacity)
    cands = cands if cands is not None else candidates()
    forecast_qs = tuple(sorted({c.quantile or 0.9 for c in cands if not c.simple}))
    if any(not c.simple for c in cands):
        if track is None or track.n < len(history) or track.horizon != env.horizon:
            track = ForecastTrack(step, env.horizon, len(history))
        y = env.demand
        missing = ~np.isfinite(track.peak[: len(history) - 1])
        lo = max(0, start - track.window - track.horizon)
        if missing[lo:].any():
            first = lo + int(np.argmax(missing[lo:]))
            track.fill(y, first, len(history) - 2)
    oracle = oracle_cost(env)
    step_h = step / pd.Timedelta("1h")
    rows = []
    for family in SIMPLE_FAMILIES:  # each family at all its targets in one numpy pass
        mine = [c for c in cands if c.family == family]
        if mine:
            swept = sweep_simple(
                env,
                family,
                tuple(c.target for c in mine),
                sizing=history if sizing is None else sizing,
            )
            rows += [
                BacktestRow(
                    c,
                    float(swept.under_pct[j]),
                    float(swept.billed[j] * step_h / oracle) if oracle else math.nan,
                    int(swept.actions[j]),
                )
                for j, c in enumerate(mine)
            ]
    for c in cands:
        if c.simple:
            continue
        policy = replay_policy(
            c, sizing=history if sizing is None else sizing, track=track, quantiles=forecast_qs
        )
        result = simulate(env, policy)
        rows.append(
            BacktestRow(
                c,
                float(100 * np.mean(result.util > 1.0 + 1e-9)),
                float(result.billed.sum() * step_h / oracle) if oracle else math.nan,
                int(result.actions),
            )
        )
    return Tuning(
        tuple(rows),
        history.index[start],
        history.index[-1],
        len(history) - start,
        time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class Choice:
    """What a tuning picked for a risk target, and why."""

    row: BacktestRow
    risk_pct: float
    met: bool
    best_simple: BacktestRow | None
    best_forecast: BacktestRow | None
    reason: str

    @property
    def candidate(self) -> Candidate:
        return self.row.candidate

    @property
    def forecast_wins(self) -> bool:
        return not self.candidate.simple


def _cheapest(rows: list[BacktestRow]) -> BacktestRow | None:
    return min(rows, key=lambda r: (r.cost_x_oracle, r.under_pct)) if rows else None


def cost_at_risk(rows: list[BacktestRow], level: float) -> float:
    """A family's cost at `level` % under-provisioned steps, read off its sweep as the goal
    reads it (the shared harness' `cost_at_risk`): the cheapest setting at or below the level,
    or the line between the settings either side of it if that is cheaper; NaN when no setting
    gets that low."""
    if not rows:
        return math.nan
    x = np.array([r.under_pct for r in rows], dtype=float)
    y = np.array([r.cost_x_oracle for r in rows], dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[0] > level + 1e-9:
        return math.nan
    below = float(y[x <= level + 1e-9].min())
    if (x > level + 1e-9).any():
        return min(below, float(np.interp(level, x, y)))
    return below


def family_score(rows: list[BacktestRow], risk_pct: float) -> float:
    """How cheap a family is *around* the risk target: the mean of its cost at the levels
    risk x 2^-RISK_BAND .. risk x 2^+RISK_BAND (BAND_LEVELS levels, log-spaced); below the
    family's safest setting its safest cost counts. Read at one level, the choice follows
    the noise of one fortnight: the weeks after it give a policy a share of under-provisioned
    steps often a third off this one's, or half or twice it (the load's bursts differ), and a
    family cheapest only at exactly the target on the history is no better bet."""
    if not rows:
        return math.nan
    lowest = min(r.under_pct for r in rows)
    levels = risk_pct * 2.0 ** np.linspace(-RISK_BAND, RISK_BAND, BAND_LEVELS)
    return float(np.mean([cost_at_risk(rows, max(float(lv), lowest)) for lv in levels]))


def pick(tuning: Tuning, risk_pct: float = DEFAULT_RISK_PCT) -> Choice:
    """The family cheapest around `risk_pct` (`family_score`: its cost curve over a band of
    risk levels, as the goal reads a family, not one setting's point) among the families with
    a setting at most `risk_pct` % under-provisioned, then that family's cheapest such setting.
    The forecast family only when its score is more than TIE below the best simple family's.
    When no setting meets the target, the safest (fewest under-provisioned steps, then
    cheapest), saying so."""
    meets = [r for r in tuning.rows if r.under_pct <= risk_pct + 1e-9]
    if not meets:
        safest = min(tuning.rows, key=lambda r: (r.under_pct, r.cost_x_oracle))
        return Choice(
            safest,
            risk_pct,
            False,
            None,
            None,
            f"no candidate kept under-provisioned steps at or below {risk_pct:g} % on the "
            f"history; the safest is used: {safest.candidate.label} "
            f"({safest.under_pct:.2f} % under, {safest.cost_x_oracle:.2f}x the oracle)",
        )
    families: dict[Family, list[BacktestRow]] = {}
    for r in tuning.rows:
        families.setdefault(r.candidate.family, []).append(r)
    scores = {
        f: family_score(rows, risk_pct)
        for f, rows in families.items()
        if any(r.under_pct <= risk_pct + 1e-9 for r in rows)
    }
    simple_scores = {f: v for f, v in scores.items() if f != "forecast"}
    best_family = min(simple_scores.items(), key=lambda kv: kv[1])[0] if simple_scores else None
    simple = (
        _cheapest([r for r in families[best_family] if r.under_pct <= risk_pct + 1e-9])
        if best_family
        else None
    )
    fc = _cheapest([r for r in meets if not r.candidate.simple])
    band = f"{risk_pct * 2**-RISK_BAND:.2g}-{risk_pct * 2**RISK_BAND:.2g} %"
    fc_score = scores.get("forecast", math.nan)
    best_score = simple_scores[best_family] if best_family is not None else math.inf
    if fc is not None and (best_family is None or fc_score < best_score * (1 - TIE)):
        versus = (
            f"{(1 - fc_score / best_score):.0%} below the best simple family, "
            f"{LABELS[best_family]} ({best_score:.2f}x)"
            if best_family is not None
            else "no simple policy met the risk target"
        )
        return Choice(
            fc,
            risk_pct,
            True,
            simple,
            fc,
            f"forecast pays on this history: {fc.candidate.label} costs "
            f"{fc.cost_x_oracle:.2f}x the oracle at {fc.under_pct:.2f} % under "
            f"(target {risk_pct:g} %); around the target ({band} under) the forecast costs "
            f"{fc_score:.2f}x on average, {versus}",
        )
    assert simple is not None and best_family is not None
    if fc is None:
        why = "no forecast setting met the risk target"
    else:
        why = (
            f"the forecast ({fc_score:.2f}x around the target; its best setting here "
            f"{fc.candidate.label}, {fc.cost_x_oracle:.2f}x) does not beat it by more than "
            f"{TIE:.0%}"
        )
    return Choice(
        simple,
        risk_pct,
        True,
        simple,
        fc,
        f"no forecast beats the simple policies on this history: {simple.candidate.label} "
        f"costs {simple.cost_x_oracle:.2f}x the oracle at {simple.under_pct:.2f} % under "
        f"(target {risk_pct:g} %); {LABELS[best_family]} is the cheapest family around the "
        f"target ({best_score:.2f}x on average over {band} under); {why}",
    )


def artifact_rows(tuning: Tuning, choice: Choice) -> list[dict[str, Any]]:
    """The back-test table, chosen first, then by cost: candidate, result, reason, then the
    figures (under-provisioned %, cost x oracle, actions)."""
    rows = []
    order = sorted(tuning.rows, key=lambda r: (r.cost_x_oracle, r.under_pct))
    for r in [choice.row, *[r for r in order if r is not choice.row]]:
        if r is choice.row:
            result, reason = "chosen", choice.reason
        elif r.under_pct <= choice.risk_pct + 1e-9:
            result, reason = "meets the risk target", "costlier than the chosen one"
        else:
            result, reason = "too risky", f"{r.under_pct:.2f} % under > {choice.risk_pct:g} %"
        rows.append(
            {
                "candidate": r.candidate.label,
                "result": result,
                "reason": reason,
                "under_pct": round(r.under_pct, 3),
                "cost_x_oracle": round(r.cost_x_oracle, 3),
                "actions": r.actions,
            }
        )
    return rows


def choice_record(
    tuning: Tuning, choice: Choice, at: str, history: pd.Series | None = None
) -> dict[str, Any]:
    """What is stored for the group (and the payload of `perfops.scaling.tuned`); a schedule
    keeps the p99 load of its windows (`schedule_load`), sized into instances when used."""
    best_simple = choice.best_simple
    best_fc = choice.best_forecast
    return {
        "at": at,
        "candidate": asdict(choice.candidate),
        "label": choice.candidate.label,
        "risk_pct": choice.risk_pct,
        "met": choice.met,
        "forecast_wins": choice.forecast_wins,
        "under_pct": round(choice.row.under_pct, 3),
        "cost_x_oracle": round(choice.row.cost_x_oracle, 3),
        "best_simple": best_simple.candidate.label if best_simple else None,
        "best_simple_cost": round(best_simple.cost_x_oracle, 3) if best_simple else None,
        "best_forecast": best_fc.candidate.label if best_fc else None,
        "best_forecast_cost": round(best_fc.cost_x_oracle, 3) if best_fc else None,
        "reason": choice.reason,
        "history_from": str(tuning.start),
        "history_to": str(tuning.end),
        "steps": tuning.steps,
        "seconds": round(tuning.seconds, 1),
        "schedule_load": (
            list(schedule_loads(history))
            if history is not None and choice.candidate.family == "scheduled_p99"
            else None
        ),
    }


def schedule_loads(history: pd.Series, quantile: float = 0.99) -> tuple[float, float]:
    """The load `quantile` in business hours and off hours of `history`."""
    bh = business_hours(pd.DatetimeIndex(history.index))
    on = history[bh] if bh.any() else history
    off = history[~bh] if (~bh).any() else history
    return float(on.quantile(quantile)), float(off.quantile(quantile))


def candidate_from_record(record: dict[str, Any]) -> Candidate:
    raw = record["candidate"]
    return Candidate(raw["family"], float(raw["target"]), raw.get("quantile"), raw["margin"])


def scaling_policy_for(
    base: ScalingPolicy,
    candidate: Candidate,
    schedule_load: tuple[float, float] | list[float] | None = None,
) -> ScalingPolicy:
    """The `ScalingPolicy` that runs `candidate` live, from the group's `base` policy (its
    bounds, capacity per instance, boot time and step stay). A simple family turns perfops'
    extras off (forecast, burst window, dead band, headroom), as the back-test ran it; a
    schedule (UTC business hours, Mon-Fri 09-17) is sized from `schedule_load` (the p99 load
    of business hours and off hours) at the target utilisation and sets a minimum
    (`schedule_floor`), with target tracking at that target above it (`ScheduledFloor`). The
    group's own bounds, schedule and `max_step` stay: guardrails over whichever policy runs."""
    u = candidate.target
    plain: dict[str, Any] = {
        "mode": "reactive",
        "target_utilization": u,
        "adaptive_stabilization": False,
        "burst_window": timedelta(0),
        "scale_in_tolerance": 0.0,
        "scale_out_headroom": 0.0,
        "scale_in_cooldown": timedelta(0),
        "stabilization_window": timedelta(minutes=5),
        "thresholds": None,
        "schedule_floor": None,  # the group's own `schedule` stays: its bounds are guardrails
        "target_tracking": True,
        # max_step stays the group's: the replays use the full range, but live the step limit
        # is a guardrail like the bounds (a tuned choice took a group whose load fell to zero
        # from 30 to its minimum in one action)
    }
    if candidate.family == "forecast":
        return _updated(
            base,
            {
                "mode": "forecast_and_scale" if base.mode == "reactive" else base.mode,
                "target_utilization": u,
                "forecast_quantile": candidate.quantile or base.forecast_quantile,
                "forecast_margin": candidate.margin,
            },
        )
    if candidate.family == "target_tracking_30m":
        plain["stabilization_window"] = timedelta(minutes=30)
    elif candidate.family == "step":
        step = base.step
        out = min(u + 0.10, 1.0)
        plain["target_tracking"] = False
        plain["thresholds"] = StepThresholds(
            scale_out_above=out,
            scale_in_below=min(0.30, out - 0.05),
            scale_out_periods=max(1, math.ceil(timedelta(minutes=3) / step)),
            scale_in_periods=max(1, math.ceil(timedelta(minutes=15) / step)),
        )
        plain["scale_out_cooldown"] = timedelta(seconds=300)
        plain["scale_in_cooldown"] = timedelta(seconds=300)
        plain["stabilization_window"] = timedelta(0)
    elif candidate.family == "scheduled_p99":
        if schedule_load is None:
            raise TuningError("a scheduled policy needs the p99 load of its windows; none given")
        n_bh, n_off = (base.need(load, u) for load in schedule_load)
        lo_bh = min(max(n_bh, base.min_capacity), base.max_capacity)
        lo_off = min(max(n_off, base.min_capacity), base.max_capacity)
        plain["schedule_floor"] = Schedule(
            timezone="UTC",
            windows=(
                ScheduleWindow(
                    start=clock(9, 0),
                    end=clock(17, 0),
                    min_capacity=lo_bh,
                    max_capacity=base.max_capacity,
                ),
            ),
            off_hours_min=lo_off,
            off_hours_max=base.max_capacity,
        )  # a floor (on top of the group's own schedule); target tracking runs above it
    if base.mode == "forecast_only":
        plain["mode"] = "forecast_only"  # shows what it would pick; still decides nothing
    return _updated(base, plain)


def _updated(base: ScalingPolicy, update: dict[str, Any]) -> ScalingPolicy:
    """A validated copy (`model_copy(update=...)` would skip validation)."""
    return ScalingPolicy(**{**dict(base), **update})


EVENT_TUNED = "perfops.scaling.tuned"


@dataclass
class TuningRun:
    """What one tuning run found and stored."""

    group: str
    risk_pct: float
    result: str  # "tuned", "would tune" (not stored) or "no tuning"
    reason: str
    choice: str = ""
    forecast_wins: bool = False
    met: bool = False
    stored: bool = False
    record: dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None
    source: str = ""

    @property
    def summary(self) -> str:
        if not self.choice:
            return f"{self.group}: {self.result}: {self.reason}"
        return f"{self.group}: {self.result}: {self.choice}: {self.reason}"


def tuning_events(run: TuningRun) -> list[tuple[str, str, dict[str, Any]]]:
    """`perfops.scaling.tuned` on the group, with the stored choice (or why there is none)."""
    payload = {
        "group": run.group,
        "result": run.result,
        "risk_pct": run.risk_pct,
        "choice": run.choice,
        "forecast_wins": run.forecast_wins,
        "met": run.met,
        "stored": run.stored,
        "reason": run.reason,
    }
    if run.record:
        payload |= {k: v for k, v in run.record.items() if k not in payload}
    return [(EVENT_TUNED, f"perfops.scaling.group.{run.group}", payload)]


PEAK_INSTANCES = 20  # without capacity_per_instance: the history's p99.9 needs this many


def base_policy(
    series: pd.Series, step: timedelta, policy: ScalingPolicy | None, mode: str | None = None
) -> ScalingPolicy:
    """The group's policy on the history's step (default: 2..100 instances, 70 % target,
    capacity per instance sized so the history's p99.9 needs PEAK_INSTANCES)."""
    if policy is None:
        peak = float(series.quantile(0.999))
        policy = ScalingPolicy(capacity_per_instance=max(peak / PEAK_INSTANCES, 1e-9))
    update: dict[str, Any] = {"step": step}
    if mode is not None:
        update["mode"] = mode
    return policy.model_copy(update=update)
