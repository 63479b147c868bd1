"""Charts of scaling runs as PNG bytes (matplotlib `Figure`, Agg, no pyplot): load, forecast and
capacity over time. The caller writes them where they belong."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from decisions.scaling_policy import Decision, ScalingPolicy
from decisions.scaling_simulation import Env, ReplayResult, horizon_forecasts


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes (matplotlib is imported on first use: it costs every command's
    start otherwise)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.subplots()


def _png(fig: Any, ax: Any, title: str) -> bytes:
    """Title, legend and dated x axis, then the figure as PNG."""
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def backtest_chart(env: Env, result: ReplayResult, days: float = 7.0) -> bytes:
    """The last `days` of a replay: load, perfops' forecast, and its serving capacity."""
    index = env.series.index[env.start :]
    n = min(len(index), max(2, int(days * 86400 / env.step.total_seconds())))
    load = env.demand[env.start :][-n:]
    fc = horizon_forecasts(env)
    shifted = np.concatenate([np.full(env.horizon, np.nan), fc[: len(fc) - env.horizon]])[-n:]
    fig, ax = _figure((11, 4))
    ax.plot(index[-n:], load, lw=1, label="load")
    ax.plot(index[-n:], shifted, lw=1, label=f"forecast ({env.horizon} steps ahead)")
    ax.step(
        index[-n:],
        result.ready[-n:] * env.capacity,
        lw=1,
        where="post",
        label=f"{result.name} capacity",
    )
    return _png(fig, ax, f"{result.name}: load, forecast and serving capacity (last {days:g} days)")


def decision_chart(
    load: pd.Series,
    step: timedelta,
    upper: pd.Series,
    decision: Decision,
    policy: ScalingPolicy,
) -> bytes:
    """One decision: the last two days of `load` (a regular series every `step`), the forecast's
    upper bound, and the current and desired capacity at the policy's target utilization."""
    recent = load.iloc[-int(timedelta(days=2) / step) :]
    fig, ax = _figure((10, 4))
    ax.plot(recent.index, recent.to_numpy(), label="load", lw=1)
    ax.plot(
        upper.index, upper.to_numpy(), "o-", label=f"forecast p{100 * policy.forecast_quantile:g}"
    )
    cap = policy.capacity_per_instance * policy.target_utilization
    ax.axhline(decision.current * cap, color="grey", ls="--", label=f"current {decision.current}")
    ax.axhline(decision.desired * cap, color="green", ls=":", label=f"desired {decision.desired}")
    return _png(fig, ax, f"load, forecast and capacity at {policy.target_utilization:.0%} target")
