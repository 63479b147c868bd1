"""tasks.load_history.regularize: the grid, short gaps filled, and what refuses a decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.load_history import InsufficientData, regularize

STEP = timedelta(minutes=5)
END = datetime(2024, 3, 6, 12, 0, tzinfo=UTC)


def raw(n: int = 288, values: object = None) -> pd.Series:
    index = pd.date_range(end=END, periods=n, freq=STEP)
    data = np.arange(n, dtype=float) if values is None else values
    return pd.Series(data, index=index)


def test_short_gaps_are_interpolated_on_a_regular_grid() -> None:
    s = raw().drop(raw().index[100:103])  # 15 minutes missing
    h = regularize(s, STEP, source="t", now=END, max_age=timedelta(minutes=15))
    assert len(h.series) == 288 and pd.DatetimeIndex(h.series.index).freq == pd.Timedelta(STEP)
    assert h.series.iloc[101] == pytest.approx(101.0)
    assert h.missing_fraction == pytest.approx(3 / 288)
    assert h.last_at == END


def test_nan_and_negative_values() -> None:
    values = np.arange(288, dtype=float)
    values[10] = np.nan
    values[20] = -5.0
    h = regularize(raw(values=values), STEP, source="t")
    assert h.series.iloc[10] == pytest.approx(10.0) and h.series.iloc[20] == 0.0


def test_flat_zero_is_valid_history() -> None:
    h = regularize(raw(values=np.zeros(288)), STEP, source="t")
    assert (h.series == 0).all()


@pytest.mark.parametrize(
    ("series", "kw", "message"),
    [
        (pd.Series([], dtype=float, index=pd.DatetimeIndex([], tz=UTC)), {}, "empty result"),
        (raw(), {"now": END + timedelta(hours=2), "max_age": timedelta(minutes=15)}, "stale"),
        (raw().drop(raw().index[100:136]), {}, "a gap of 3:00:00"),
        (raw().iloc[::5], {}, "80% of the 286 steps have no data"),
        (raw(values=np.full(288, np.nan)), {}, "empty result"),
    ],
)
def test_refused_histories_say_why(series: pd.Series, kw: dict, message: str) -> None:
    with pytest.raises(InsufficientData, match=message):
        regularize(series, STEP, source="t", **kw)
