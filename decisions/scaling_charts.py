"""Charts of scaling runs (matplotlib, Agg backend): load, forecast and capacity over time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from decisions.scaling_policy import Decision, ScalingPolicy
from decisions.scaling_replay import Env, ReplayResult, horizon_forecasts


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A pyplot figure and its axes on the Agg backend (matplotlib is imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig: Any, ax: Any, title: str, path: Path) -> None:
    """Title, legend and dated x axis, then the PNG at `path` (its folder made); the figure is
    closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def backtest_chart(path: Path, env: Env, result: ReplayResult, days: float = 7.0) -> Path:
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
    _save(fig, ax, f"{result.name}: load, forecast and serving capacity (last {days:g} days)", path)
    return path


def decision_chart(
    path: Path,
    load: pd.Series,
    step: timedelta,
    upper: pd.Series,
    decision: Decision,
    policy: ScalingPolicy,
) -> str:
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
    _save(fig, ax, f"load, forecast and capacity at {policy.target_utilization:.0%} target", path)
    return str(path)
