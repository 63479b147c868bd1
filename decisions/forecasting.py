"""Load forecasting: pure functions, no I/O, no Prefect.

`forecast(history, horizon)` predicts the next `horizon` steps of a regular load series. It is a
small, self-weighting ensemble of cheap forecasters refitted from scratch on every call (about
a millisecond on weeks of 5-minute data), so there is no model state to cache or to go stale:

- ``naive``: the last value (best right after a level shift or inside a burst);
- ``mean3``: the mean of the last three values (noisy, weakly seasonal load);
- ``week`` / ``day``: seasonal analogues, i.e. what followed the same time of day one to four
  weeks (days) ago, rescaled by how the last hour compares with the same hour back then, and
  combined by their median (daily and weekly seasonality, holidays in one past week, trends and
  level shifts through the rescaling).

Each member is back-tested on the recent past (the last two days of forecast origins, at every
step of the horizon) and the members are weighted by the inverse of their squared error, so a
seasonal trace follows the seasonal members and a bursty one the naive ones. Histories too short
for a season fall back to the members that need none (with one value: that value).

`forecast_quantile(history, horizon, q)` adds the empirical `q` quantile of the ensemble's own
recent relative errors (realised / forecast), i.e. a calibrated upper bound for provisioning.

Chosen by back-testing against statsmodels' Holt-Winters (daily and weekly season) and a weekly
seasonal naive in ../shared/bench/scaling_eval.py; see docs/scaling.md and
`python -m benchmarks.scaling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SEASON_WEEKS = 4  # past weeks (days) whose analogue is used
LEVEL_WINDOW = pd.Timedelta("1h")  # recent window the analogues are rescaled on
MIN_LEVEL_STEPS = 3
RATIO_BOUNDS = (0.5, 2.0)  # a past analogue is rescaled by at most this much
BACKTEST_WINDOW = pd.Timedelta("2D")  # recent forecast origins the members are scored on
MIN_BACKTEST_ORIGINS = 12
WEEK_AHEAD_WINDOW = pd.Timedelta("12h")  # plus the origins this far ahead, one week ago
MAX_BACKTEST_ORIGINS = 96  # origins are thinned to at most this many (speed)
WEIGHT_POWER = 2.0  # weight = (1 / relative MSE) ** WEIGHT_POWER
QUANTILE_WINDOW = pd.Timedelta("7D")
RATIO_BOUNDS_UPPER = (0.8, 4.0)  # a multiplicative margin stays within these
MIN_UPPER_FRACTION = 0.8  # an upper bound never below this fraction of the forecast
WEIGHT_REFRESH = pd.Timedelta("1h")  # a pass re-scores the members' weights this often
# history older than this is never read (4 weekly analogues of the oldest back-test origin)
MAX_HISTORY = pd.Timedelta("7D") * (SEASON_WEEKS + 1) + QUANTILE_WINDOW


class ForecastInputError(ValueError):
    """The history cannot be forecast (empty, irregular, no DatetimeIndex, bad horizon)."""


@dataclass(frozen=True)
class Forecast:
    """A forecast with how it was made (for reasons and artifacts)."""

    mean: pd.Series
    weights: dict[str, float]


def _step(history: pd.Series) -> pd.Timedelta:
    if not isinstance(history.index, pd.DatetimeIndex):
        raise ForecastInputError("history needs a DatetimeIndex")
    freq = history.index.freq
    if freq is not None:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq).nanos, unit="ns")
    if len(history) < 2:
        raise ForecastInputError(
            "history of one value has no frequency: give the index a freq (e.g. asfreq('5min'))"
        )
    diffs = np.diff(history.index.asi8)
    if diffs.min() != diffs.max() or diffs[0] <= 0:
        raise ForecastInputError(
            "history is not on a regular grid (steps differ); resample it first "
            "(tasks.load_history.regularize)"
        )
    return pd.Timedelta(int(diffs[0]), unit="ns")


def _clean(history: pd.Series, step: pd.Timedelta) -> np.ndarray:
    """The last MAX_HISTORY of the values as floats, NaN filled by interpolation (edges:
    nearest) and negatives set to 0."""
    keep = int(MAX_HISTORY / step) + 1
    values = history.to_numpy()[-keep:]
    if values.dtype.kind != "f":
        values = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    y = np.array(values, dtype=float)
    bad = ~np.isfinite(y)
    if bad.all():
        raise ForecastInputError("history has no finite value")
    if bad.any():
        idx = np.arange(len(y))
        y[bad] = np.interp(idx[bad], idx[~bad], y[~bad])
    return np.maximum(y, 0.0)


def _analogue(
    y: np.ndarray, period: int, level: int, origins: np.ndarray, horizon: int
) -> np.ndarray | None:
    """Median over k = 1..SEASON_WEEKS of y[t + h - k*period] * clip(recent_t / recent_{t-k*p}).

    `origins` are the indexes t of the last observed value; returns (len(origins), horizon) or
    None when not even one period with its level window is available for every origin.
    """
    if origins.min() + 1 - level < 0:
        return None
    h = np.arange(1, horizon + 1)
    window = np.arange(1 - level, 1)[None, :]  # the level window ending at each index

    def level_sum(ends: np.ndarray) -> np.ndarray:
        # summed row by row: the same value whether origins come one by one or in a batch
        return np.asarray(y[ends[:, None] + window].sum(axis=1))

    recent = level_sum(origins)
    members = []
    for k in range(1, SEASON_WEEKS + 1):
        past = origins - k * period
        if past.min() - level + 1 < 0:
            break
        past_level = level_sum(past)
        ratio = np.clip((recent + 1.0) / (past_level + 1.0), *RATIO_BOUNDS)
        members.append(y[past[:, None] + h[None, :]] * ratio[:, None])
    if not members:
        return None
    return np.median(np.stack(members), axis=0)


def level_steps(step: pd.Timedelta) -> int:
    """Steps of the window the analogues are rescaled on."""
    return max(MIN_LEVEL_STEPS, int(LEVEL_WINDOW / step))


def _members(
    y: np.ndarray, step: pd.Timedelta, origins: np.ndarray, horizon: int
) -> dict[str, np.ndarray]:
    """Each member's forecasts from each origin: name -> (len(origins), horizon)."""
    out: dict[str, np.ndarray] = {}
    ones = np.ones((1, horizon))
    out["naive"] = y[origins][:, None] * ones
    if origins.min() >= 2:
        out["mean3"] = ((y[origins] + y[origins - 1] + y[origins - 2]) / 3.0)[:, None] * ones
    level = level_steps(step)
    for name, period in (("week", pd.Timedelta("7D")), ("day", pd.Timedelta("1D"))):
        p = round(period / step)
        if p <= horizon or p < 2:
            continue
        fc = _analogue(y, p, level, origins, horizon)
        if fc is not None:
            out[name] = fc
    return out


def _weights(y: np.ndarray, step: pd.Timedelta, horizon: int) -> tuple[dict[str, float], int]:
    """Inverse-MSE weights of the members back-tested on recent origins."""
    n = len(y)
    window = max(MIN_BACKTEST_ORIGINS, int(BACKTEST_WINDOW / step))
    last = n - 1 - horizon  # last origin whose whole horizon is observed
    first = max(0, last - window + 1)
    if last - first + 1 < MIN_BACKTEST_ORIGINS:
        return {}, 0
    stride = max(1, (last - first + 1) // MAX_BACKTEST_ORIGINS)
    origins = np.arange(last, first - 1, -stride)[::-1]
    # also the hours ahead one week ago: a member that misses the coming weekday/weekend
    # transition (the daily analogue on a Friday evening) is scored on it
    week = round(pd.Timedelta("7D") / step)
    ahead = max(1, round(WEEK_AHEAD_WINDOW / step))
    if n - 1 - week - level_steps(step) - SEASON_WEEKS * week >= 0:
        lo, hi = n - 1 - week, min(n - 1 - week + ahead, last)
        if hi > lo:
            extra = np.arange(lo, hi + 1, max(1, (hi - lo + 1) // (MAX_BACKTEST_ORIGINS // 2)))
            origins = np.concatenate([extra, origins])
    h = np.arange(1, horizon + 1)[None, :]
    actual = y[origins[:, None] + h]
    scale = float(np.mean(np.abs(actual))) + 1e-9
    weights = {}
    for name, fc in _members(y, step, origins, horizon).items():
        weights[name] = _score(fc, actual, scale)
    # a short history: a seasonal member exists only for the later origins; score it there
    for name, period in (("day", pd.Timedelta("1D")), ("week", pd.Timedelta("7D"))):
        later = origins[origins >= level_steps(step) - 1 + round(period / step)]
        if name not in weights and len(later) >= MIN_BACKTEST_ORIGINS:
            members = _members(y, step, later, horizon)
            if name in members:
                sub = y[later[:, None] + h]
                weights[name] = _score(members[name], sub, scale)
                for other in ("naive", "mean3"):
                    if other in members:
                        weights[other] = _score(members[other], sub, scale)
    return weights, len(origins)


def _score(fc: np.ndarray, actual: np.ndarray, scale: float) -> float:
    mse = float(np.mean((fc - actual) ** 2)) / scale**2
    return float((1.0 / (mse + 1e-6)) ** WEIGHT_POWER)


def _ensemble(
    y: np.ndarray, step: pd.Timedelta, horizon: int
) -> tuple[np.ndarray, dict[str, float]]:
    now = np.array([len(y) - 1])
    members = _members(y, step, now, horizon)
    weights, _ = _weights(y, step, horizon)
    weights = {k: w for k, w in weights.items() if k in members}
    if not weights:  # short history: no back-test yet
        weights = {"mean3": 1.0} if "mean3" in members else {"naive": 1.0}
    total = sum(weights.values())
    weights = {k: w / total for k, w in weights.items()}
    mean = sum(w * members[k][0] for k, w in weights.items())
    return np.maximum(np.asarray(mean, dtype=float), 0.0), weights


def _future_index(history: pd.Series, step: pd.Timedelta, horizon: int) -> pd.DatetimeIndex:
    return pd.date_range(history.index[-1] + step, periods=horizon, freq=step)


def _check(history: pd.Series, horizon: int) -> None:
    if not isinstance(history, pd.Series):
        raise ForecastInputError(f"history must be a pandas Series, got {type(history).__name__}")
    if len(history) == 0:
        raise ForecastInputError("history is empty: nothing to forecast from")
    if not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ForecastInputError(f"horizon must be a positive number of steps, got {horizon!r}")


def forecast_detail(history: pd.Series, horizon: int) -> Forecast:
    """`forecast` plus the members' weights (for reasons and records)."""
    _check(history, horizon)
    step = _step(history)
    y = _clean(history, step)
    mean, weights = _ensemble(y, step, int(horizon))
    return Forecast(pd.Series(mean, index=_future_index(history, step, horizon)), weights)


def forecast(history: pd.Series, horizon: int) -> pd.Series:
    """The expected load for the `horizon` steps after `history` (same frequency).

    `history` has a DatetimeIndex at a fixed frequency; NaN values are interpolated and negative
    values count as zero. Raises ForecastInputError on an empty or irregular history.
    """
    return forecast_detail(history, horizon).mean


def forecast_quantile(
    history: pd.Series, horizon: int, q: float = 0.95, margin: str = "additive"
) -> pd.Series:
    """An upper bound of the load over the next `horizon` steps, exceeded with about 1 - q.

    The forecast plus the `q` quantile of (realised peak - forecast peak) of the ensemble's own
    forecasts over the last week, taken among the forecasts closest in level to the current
    forecast peak (at least a day of them): an additive margin in load units. (A multiplicative
    margin, realised / forecast, let the skewed relative errors of quiet hours multiply a
    forecast that had just followed a burst up: capacity ran to ~4x the load after bursts; see
    docs/scaling.md.) `margin="ratio"` gives that multiplicative bound (bounded to 0.8-4x),
    which the tuning back-test still offers. With under a day of errors, the forecast + 10 %.
    """
    if not 0.0 < q < 1.0:
        raise ForecastInputError(f"quantile must be between 0 and 1, got {q}")
    detail = forecast_detail(history, horizon)
    step = _step(history)
    y = _clean(history, step)
    errors = peak_errors(y, step, int(horizon))
    mean = detail.mean.to_numpy()
    day = int(pd.Timedelta("1D") / step)
    peak = float(mean.max())
    if margin == "ratio":
        factor = ratio_quantiles(errors.fpeak, errors.actual, peak, [q], day)[0]
        return pd.Series(mean * factor, index=detail.mean.index)
    if margin != "additive":
        raise ForecastInputError(f"margin must be 'additive' or 'ratio', got {margin!r}")
    add = margin_quantiles(errors.fpeak, errors.actual, peak, [q], day)[0]
    return pd.Series(upper_bound(mean, add), index=detail.mean.index)


@dataclass(frozen=True)
class PeakErrors:
    """Forecast peaks and realised peaks of recent forecast origins."""

    fpeak: np.ndarray
    actual: np.ndarray


def peak_errors(y: np.ndarray, step: pd.Timedelta, horizon: int) -> PeakErrors:
    """The ensemble's forecasts from the origins of the last QUANTILE_WINDOW whose horizon is
    already observed (with today's weights), and the realised peak after each."""
    n = len(y)
    last = n - 1 - horizon
    first = max(MIN_LEVEL_STEPS, last - int(QUANTILE_WINDOW / step) + 1)
    day = int(pd.Timedelta("1D") / step)
    if last - first + 1 < day:
        return PeakErrors(np.empty(0), np.empty(0))
    origins = np.arange(first, last + 1)
    members = _members(y, step, origins, horizon)
    weights, _ = _weights(y, step, horizon)
    weights = {k: w for k, w in weights.items() if k in members} or {"naive": 1.0}
    total = sum(weights.values())
    fc = sum(w / total * members[k] for k, w in weights.items())
    fpeak = np.maximum(np.asarray(fc).max(axis=1), 0.0)
    actual = y[origins[:, None] + np.arange(1, horizon + 1)[None, :]]
    return PeakErrors(fpeak, actual.max(axis=1))


def margin_quantiles(
    fpeak: np.ndarray, actual: np.ndarray, peak: float, qs: Sequence[float], min_samples: int
) -> np.ndarray:
    """The `qs` quantiles of realised - forecast peak among recent forecasts close in level to
    `peak`: those within half to twice it, or else the `min_samples` nearest to it (a
    burst-level forecast is not calibrated on quiet hours' errors). With fewer than
    `min_samples` errors: 10 % of `peak` for every quantile."""
    n = len(fpeak)
    if n < max(min_samples, 1):
        return np.full(len(qs), 0.10 * max(peak, 0.0))
    residual = actual - fpeak
    similar = (fpeak >= 0.5 * peak) & (fpeak <= 2.0 * peak)
    if similar.sum() >= min_samples:
        chosen = residual[similar]
    else:
        nearest = np.argpartition(np.abs(fpeak - peak), min_samples - 1)[:min_samples]
        chosen = residual[nearest]
    return np.quantile(chosen, np.asarray(qs, dtype=float))


def ratio_quantiles(
    fpeak: np.ndarray, actual: np.ndarray, peak: float, qs: Sequence[float], min_samples: int
) -> np.ndarray:
    """Like `margin_quantiles`, but of realised / forecast peak (a multiplier, bounded to
    RATIO_BOUNDS_UPPER): the margin perfops used before; the tuning back-test still offers it,
    as it fits load whose noise grows with its level. Without enough errors: 1.1."""
    ok = fpeak > 0
    fpeak, actual = fpeak[ok], actual[ok]
    if len(fpeak) < max(min_samples, 1):
        return np.full(len(qs), 1.10)
    similar = (fpeak >= 0.5 * peak) & (fpeak <= 2.0 * peak)
    if similar.sum() >= min_samples:
        chosen = actual[similar] / fpeak[similar]
    else:
        nearest = np.argpartition(np.abs(fpeak - peak), min_samples - 1)[:min_samples]
        chosen = actual[nearest] / fpeak[nearest]
    return np.clip(np.quantile(chosen, np.asarray(qs, dtype=float)), *RATIO_BOUNDS_UPPER)


def upper_bound(mean: np.ndarray, margin: float) -> np.ndarray:
    """mean + margin, never below MIN_UPPER_FRACTION of the mean, nor below zero."""
    mean = np.asarray(mean, dtype=float)
    return np.maximum(np.maximum(mean + margin, MIN_UPPER_FRACTION * mean), 0.0)


# --- a forecast pass: the forecasts a replay (or a tuning back-test) makes at every step ----


def weight_refresh_steps(step: pd.Timedelta) -> int:
    """Steps between two re-scorings of the members' weights in a pass (WEIGHT_REFRESH)."""
    return max(1, int(WEIGHT_REFRESH / step))


def _availability_edges(step: pd.Timedelta, horizon: int) -> np.ndarray:
    """Origins at which a member becomes available (mean3, each past day / week analogue)."""
    level = level_steps(step)
    edges = [2]
    for period in (pd.Timedelta("7D"), pd.Timedelta("1D")):
        p = round(period / step)
        if p > horizon and p >= 2:
            edges += [level - 1 + k * p for k in range(SEASON_WEEKS + 1)]
    return np.array(sorted(set(edges)))


def forecast_pass(
    y: np.ndarray,
    step: pd.Timedelta,
    horizon: int,
    first: int,
    last: int,
    weights_cache: dict[int, dict[str, float]] | None = None,
) -> np.ndarray:
    """The ensemble's forecasts made at origins first..last of `y`: (last - first + 1, horizon).

    The forecast at origin t reads y[..t] only (no look-ahead), exactly as a policy deciding
    at t would: the members at t, weighted by their back-test over the history up to the last
    refresh origin r = t - t % weight_refresh_steps (weights re-scored hourly, not every step:
    the back-test is the costly part). `weights_cache` (r -> weights) lets a caller that
    forecasts one origin at a time (`PerfopsPolicy`) reuse them.
    """
    y = np.asarray(y, dtype=float)
    y = np.maximum(y, 0.0)
    cache = {} if weights_cache is None else weights_cache
    k = weight_refresh_steps(step)
    keep = int(MAX_HISTORY / step) + 1
    edges = _availability_edges(step, horizon)
    out = np.empty((max(last - first + 1, 0), horizon))
    t = first
    while t <= last:
        r = t - t % k
        end = min(last, r + k - 1)
        if r not in cache:
            weights, _ = _weights(y[max(0, r + 1 - keep) : r + 1], step, horizon)
            cache[r] = weights
        weights = cache[r]
        origins = np.arange(t, end + 1)
        # a member that becomes available inside the block: forecast origin by origin
        split = bool(((edges > t) & (edges <= end)).any())
        groups = [origins[i : i + 1] for i in range(len(origins))] if split else [origins]
        for group in groups:
            # the last MAX_HISTORY only (older load is never read: every member is available)
            base = max(0, int(group[-1]) + 1 - keep)
            members = _members(y[base : group[-1] + 1], step, group - base, horizon)
            used = {n: w for n, w in weights.items() if n in members}
            if not used:
                used = {"mean3": 1.0} if "mean3" in members else {"naive": 1.0}
            total = sum(used.values())
            mean = sum(w / total * members[n] for n, w in used.items())
            out[group - first] = np.maximum(np.asarray(mean, dtype=float), 0.0)
        t = end + 1
    return out


def realised_peaks(y: np.ndarray, horizon: int) -> np.ndarray:
    """peak[t] = max(y[t+1 .. t+horizon]) (NaN where the horizon runs past the end)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    out = np.full(n, np.nan)
    if n > horizon:
        windows = np.lib.stride_tricks.sliding_window_view(y[1:], horizon)
        out[: len(windows)] = windows.max(axis=1)
    return out
