"""Load traces from CSV files: the metrics source when no Prometheus is configured."""

from __future__ import annotations

import pandas as pd
from prefect import task

from blocks.resolve import CsvTrace
from perfops.errors import ConfigurationError


def load_trace(trace: CsvTrace) -> pd.Series:
    """Read a `timestamp,value` CSV into a float Series on a sorted, UTC DatetimeIndex."""
    if not trace.path.is_file():
        raise ConfigurationError(f"trace file {trace.path} does not exist")
    frame = pd.read_csv(trace.path)
    missing = {trace.timestamp_column, trace.value_column} - set(frame.columns)
    if missing:
        raise ConfigurationError(
            f"trace file {trace.path} lacks column(s) {sorted(missing)}; "
            f"found {list(frame.columns)}"
        )
    index = pd.DatetimeIndex(pd.to_datetime(frame[trace.timestamp_column], utc=True), name="time")
    series = pd.Series(
        frame[trace.value_column].astype(float).to_numpy(), index=index, name=trace.value_column
    )
    return series.sort_index()


@task(name="read_trace")
def read_trace(trace: CsvTrace) -> pd.Series:
    """Task wrapper of `load_trace`: one file read."""
    return load_trace(trace)
