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
QUANTILE_BOUNDS = (0.8, 4.0)
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
    csum = np.concatenate(([0.0], np.cumsum(y)))
    h = np.arange(1, horizon + 1)
    recent = csum[origins + 1] - csum[origins + 1 - level]
    members = []
    for k in range(1, SEASON_WEEKS + 1):
        past = origins - k * period
        if past.min() - level + 1 < 0:
            break
        past_level = csum[past + 1] - csum[past + 1 - level]
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


def forecast_quantile(history: pd.Series, horizon: int, q: float = 0.95) -> pd.Series:
    """An upper bound of the load over the next `horizon` steps, exceeded with about 1 - q.

    The forecast times the `q` quantile of realised-peak / forecast-peak of the ensemble's own
    forecasts over the last week, taken among the forecasts of a similar level (half to twice
    the current forecast peak: relative errors at night are not those of the day), bounded to
    [0.8, 4]; with under a day of such errors, the forecast plus 10 %.
    """
    if not 0.0 < q < 1.0:
        raise ForecastInputError(f"quantile must be between 0 and 1, got {q}")
    detail = forecast_detail(history, horizon)
    step = _step(history)
    y = _clean(history, step)
    errors = peak_errors(y, step, int(horizon))
    return detail.mean * error_quantile(errors, float(detail.mean.max()), q)


@dataclass(frozen=True)
class PeakErrors:
    """Forecast peaks and realised / forecast peak ratios of recent forecast origins."""

    fpeak: np.ndarray
    ratio: np.ndarray
    min_samples: int


def peak_errors(y: np.ndarray, step: pd.Timedelta, horizon: int) -> PeakErrors:
    """The ensemble's forecasts from the origins of the last QUANTILE_WINDOW whose horizon is
    already observed, and how far the realised peak was above (or below) the forecast peak."""
    n = len(y)
    last = n - 1 - horizon
    first = max(MIN_LEVEL_STEPS, last - int(QUANTILE_WINDOW / step) + 1)
    day = int(pd.Timedelta("1D") / step)
    if last - first + 1 < day:
        return PeakErrors(np.empty(0), np.empty(0), day)
    origins = np.arange(first, last + 1)
    members = _members(y, step, origins, horizon)
    weights, _ = _weights(y, step, horizon)
    weights = {k: w for k, w in weights.items() if k in members} or {"naive": 1.0}
    total = sum(weights.values())
    fc = sum(w / total * members[k] for k, w in weights.items())
    fpeak = np.asarray(fc).max(axis=1)
    ok = fpeak > 0
    actual = y[origins[:, None] + np.arange(1, horizon + 1)[None, :]]
    return PeakErrors(fpeak[ok], actual.max(axis=1)[ok] / fpeak[ok], day)


def error_quantile(errors: PeakErrors, peak: float, q: float) -> float:
    """The q quantile of the ratios among forecasts of a similar level to `peak` (all of them
    when fewer than a day's worth are similar); 1.1 without enough history."""
    if len(errors.ratio) < errors.min_samples:
        return 1.10
    similar = (errors.fpeak >= 0.5 * peak) & (errors.fpeak <= 2.0 * peak)
    ratio = errors.ratio[similar] if similar.sum() >= errors.min_samples else errors.ratio
    return float(np.clip(np.quantile(ratio, q), *QUANTILE_BOUNDS))
