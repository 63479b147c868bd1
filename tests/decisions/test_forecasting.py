"""decisions.forecasting: seasonality, trends, level shifts, short histories and bad input."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from decisions.forecasting import ForecastInputError, forecast, forecast_detail, forecast_quantile

STEP = "30min"


def seasonal(weeks: float = 5, noise: float = 0.0, seed: int = 1) -> pd.Series:
    """Daily shape (peak at 18:00) x weekday/weekend level, 30-minute steps."""
    index = pd.date_range("2024-01-01", periods=int(weeks * 7 * 48), freq=STEP)
    hour = index.hour + index.minute / 60
    daily = 100 + 80 * np.sin((hour - 12) / 24 * 2 * np.pi)
    weekly = np.where(index.day_of_week < 5, 1.0, 0.6)
    rng = np.random.default_rng(seed)
    return pd.Series(daily * weekly * (1 + noise * rng.standard_normal(len(index))), index=index)


def test_follows_daily_and_weekly_seasonality() -> None:
    s = seasonal()
    history, future = s.iloc[:-4], s.iloc[-4:]
    fc = forecast(history, 4)
    assert list(fc.index) == list(future.index)
    assert pd.DatetimeIndex(fc.index).freq == pd.Timedelta(STEP)
    np.testing.assert_allclose(fc.to_numpy(), future.to_numpy(), rtol=0.02)


def test_weekend_is_forecast_from_past_weekends() -> None:
    s = seasonal(weeks=6)
    # Friday 23:30 -> Saturday: the weekly analogue knows the weekend is 40 % lower, and the
    # members are also scored on the hours ahead one week ago (the daily analogue misses them)
    cut = int(np.flatnonzero(s.index == pd.Timestamp("2024-02-09 23:30"))[0])
    fc = forecast(s.iloc[: cut + 1], 3)
    np.testing.assert_allclose(fc.to_numpy(), s.iloc[cut + 1 : cut + 4].to_numpy(), rtol=0.05)
    assert forecast_detail(s.iloc[: cut + 1], 3).weights["week"] > 0.5


def test_level_shift_and_trend_are_followed() -> None:
    s = seasonal()
    shifted = s.copy()
    shifted.iloc[-200:] *= 1.5  # a level shift four days ago
    fc = forecast(shifted.iloc[:-2], 2)
    np.testing.assert_allclose(fc.to_numpy(), shifted.iloc[-2:].to_numpy(), rtol=0.05)
    trend = s * np.linspace(1.0, 2.0, len(s))
    fc = forecast(trend.iloc[:-2], 2)
    np.testing.assert_allclose(fc.to_numpy(), trend.iloc[-2:].to_numpy(), rtol=0.05)


def test_bursty_noise_prefers_recent_values() -> None:
    index = pd.date_range("2024-01-01", periods=14 * 288, freq="5min")
    rng = np.random.default_rng(3)
    level = np.repeat(rng.uniform(10, 100, len(index) // 48), 48)  # level jumps every 4 hours
    s = pd.Series(level + rng.normal(0, 1, len(index)), index=index)
    detail = forecast_detail(s, 3)
    assert detail.weights["week"] < 0.2
    assert abs(detail.mean.iloc[0] - level[-1]) < 5


def test_short_histories_fall_back() -> None:
    one = pd.Series([5.0], index=pd.DatetimeIndex(["2024-01-01"], freq="5min"))
    assert forecast(one, 3).tolist() == [5.0, 5.0, 5.0]
    few = pd.Series([1.0, 2.0, 3.0, 4.0], index=pd.date_range("2024-01-01", periods=4, freq="1h"))
    assert forecast(few, 2).tolist() == pytest.approx([3.0, 3.0])  # mean of the last three
    day = seasonal(weeks=3 / 7)  # two days: the daily analogue, no weekly one yet
    detail = forecast_detail(day.iloc[:-2], 2)
    assert "week" not in detail.weights and "day" in detail.weights


def test_nan_negative_and_flat_zero() -> None:
    s = seasonal(weeks=1)
    s.iloc[-10:-5] = np.nan
    s.iloc[-3] = -50.0
    fc = forecast(s, 3)
    assert np.isfinite(fc).all() and (fc >= 0).all()
    zero = pd.Series(0.0, index=pd.date_range("2024-01-01", periods=2000, freq="5min"))
    assert forecast(zero, 3).tolist() == [0.0, 0.0, 0.0]
    assert forecast_quantile(zero, 3).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("history", "horizon", "message"),
    [
        (pd.Series([], dtype=float, index=pd.DatetimeIndex([])), 3, "empty"),
        (pd.Series([1.0, 2.0]), 3, "DatetimeIndex"),
        (seasonal(weeks=1), 0, "horizon"),
        (
            pd.Series(
                [1.0, 2.0, 3.0],
                index=pd.DatetimeIndex(
                    ["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:20"]
                ),
            ),
            2,
            "regular grid",
        ),
        (
            pd.Series([np.nan, np.nan], index=pd.date_range("2024-01-01", periods=2, freq="5min")),
            1,
            "no finite",
        ),
    ],
)
def test_bad_input_is_named(history: pd.Series, horizon: int, message: str) -> None:
    with pytest.raises(ForecastInputError, match=message):
        forecast(history, horizon)


def test_quantile_is_calibrated_upper_bound() -> None:
    s = seasonal(weeks=5, noise=0.1)
    upper = forecast_quantile(s.iloc[:-2], 2, 0.95)
    mean = forecast(s.iloc[:-2], 2)
    assert (upper > mean).all()
    # over the last week, the p95 bound of the peak holds for about 95 % of origins
    hits = []
    for end in range(len(s) - 7 * 48, len(s) - 2, 7):
        bound = forecast_quantile(s.iloc[:end], 2, 0.95).max()
        hits.append(s.iloc[end : end + 2].max() <= bound)
    assert 0.85 <= np.mean(hits) <= 1.0
    with pytest.raises(ForecastInputError, match="quantile"):
        forecast_quantile(s, 2, 1.5)


def test_fast_enough_to_refit_every_run() -> None:
    index = pd.date_range("2024-01-01", periods=8 * 7 * 288, freq="5min")
    s = pd.Series(np.random.default_rng(0).uniform(0, 100, len(index)), index=index)
    forecast(s, 3)
    t0 = time.perf_counter()
    for _ in range(20):
        forecast(s, 3)
    assert (time.perf_counter() - t0) / 20 < 0.05  # ~2 ms on an idle 2-core machine
