"""Load history for scaling decisions: a regular series from Prometheus or a CSV trace.

`regularize` (pure) puts raw points on a fixed grid, fills short gaps by time interpolation and
refuses ("fail static") histories that are stale, mostly missing, or have a gap longer than
`max_gap` at their end. The tasks read Prometheus (chunked range queries,
`tasks.prometheus.client`) or a CSV trace (`tasks.traces`) and hand the raw points to it;
`read_load_history` does both for a `LoadQuery`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import numpy as np
import pandas as pd
from prefect import task

from blocks import PrometheusSource
from blocks.resolve import CsvTrace
from decisions.scaling_report import LoadQuery
from perfops.errors import PerfopsError
from tasks.prometheus.client import query_range
from tasks.traces import load_trace


class InsufficientData(PerfopsError):
    """The load history cannot support a decision (empty, stale, mostly missing)."""


@dataclass(frozen=True)
class LoadHistory:
    series: pd.Series  # regular grid, UTC, gaps up to max_gap filled
    step: timedelta
    last_at: datetime  # newest real data point
    missing_fraction: float  # share of grid steps that had no data point
    source: str


def regularize(
    raw: pd.Series,
    step: timedelta,
    *,
    source: str,
    now: datetime | None = None,
    max_age: timedelta | None = None,
    max_gap: timedelta = timedelta(minutes=30),
    max_missing_fraction: float = 0.25,
) -> LoadHistory:
    """A regular, gap-filled history from raw points; InsufficientData when it cannot be."""
    values = pd.to_numeric(raw, errors="coerce").astype(float)
    values = values[np.isfinite(values.to_numpy())]
    if values.empty:
        raise InsufficientData(f"{source}: no data points (empty result): no decision")
    index = pd.DatetimeIndex(values.index)
    index = index.tz_localize(UTC) if index.tz is None else index.tz_convert(UTC)
    values = pd.Series(values.to_numpy(), index=index).sort_index()
    values = values.groupby(level=0).mean().clip(lower=0.0)
    last_at = values.index[-1].to_pydatetime()
    if now is not None and max_age is not None and now - last_at > max_age:
        raise InsufficientData(
            f"{source}: newest data point is {now - last_at} old (limit {max_age}): "
            "stale data, no decision"
        )
    freq = pd.Timedelta(step)
    grid = pd.date_range(values.index[0].floor(freq), values.index[-1].floor(freq), freq=freq)
    on_grid = values.groupby(pd.DatetimeIndex(values.index).floor(freq)).mean().reindex(grid)
    missing = on_grid.isna()
    missing_fraction = float(missing.mean())
    if missing_fraction > max_missing_fraction:
        raise InsufficientData(
            f"{source}: {missing_fraction:.0%} of the {len(grid)} steps have no data "
            f"(limit {max_missing_fraction:.0%}): no decision"
        )
    runs = missing.ne(missing.shift()).cumsum()[missing]
    longest = int(runs.value_counts().max()) if len(runs) else 0
    if longest * freq > pd.Timedelta(max_gap):
        gap = (longest * freq).to_pytimedelta()
        raise InsufficientData(
            f"{source}: a gap of {gap} in the history is longer than {max_gap}: "
            "no decision on guessed data"
        )
    filled = on_grid.interpolate("time", limit_direction="both")
    filled.index = pd.DatetimeIndex(filled.index, freq=freq.to_pytimedelta())  # type: ignore[arg-type]
    return LoadHistory(filled, step, last_at, missing_fraction, source)


@task(name="read_load_from_prometheus")
def read_load_from_prometheus(
    source: PrometheusSource,
    promql: str,
    lookback: timedelta,
    step: timedelta,
    now: datetime | None = None,
) -> pd.Series:
    """The summed value of `promql` over the last `lookback` (chunked range queries)."""
    end = now or datetime.now(UTC)
    frame = query_range.fn(source, promql, end - lookback, end, step)
    if frame.empty or frame.shape[1] == 0:
        raise InsufficientData(f"Prometheus query {promql!r} returned no series: no decision")
    return frame.sum(axis=1, min_count=1).dropna()


@task(name="read_load_from_csv")
def read_load_from_csv(trace: CsvTrace, until: datetime | None = None) -> pd.Series:
    """The trace's points (up to `until`, for replaying a moment of the trace)."""
    series = load_trace(trace)
    if until is not None:
        series = series[series.index <= pd.Timestamp(until)]
    return series


def read_load_history(
    metrics: PrometheusSource | CsvTrace, query: LoadQuery, now: datetime
) -> LoadHistory:
    """The regular load history `query` asks for, from Prometheus (fresh up to `now`) or from a
    CSV trace (on the trace's own step); InsufficientData when it cannot support a decision."""
    if isinstance(metrics, PrometheusSource):
        raw = cast(
            pd.Series,
            read_load_from_prometheus(metrics, query.promql, query.lookback, query.step, now),
        )
        return regularize(
            raw,
            query.step,
            source=f"Prometheus {metrics.url} {query.promql!r}",
            now=now,
            max_age=max(query.step * 3, timedelta(minutes=15)),
            max_gap=query.max_gap,
        )
    raw = cast(pd.Series, read_load_from_csv(metrics, query.until))
    if len(raw) < 2:
        raise InsufficientData(f"CSV trace {metrics.path}: fewer than two points")
    step = pd.Timedelta(raw.index.to_series().diff().mode().iloc[0]).to_pytimedelta()
    raw = raw[raw.index >= raw.index[-1] - query.lookback]
    return regularize(
        raw, step, source=f"CSV trace {metrics.path}", max_gap=max(query.max_gap, step)
    )
