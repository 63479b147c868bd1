"""Charts of scaling runs (matplotlib, Agg backend): load, forecast and capacity over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from decisions.scaling_replay import Env, ReplayResult, horizon_forecasts


def backtest_chart(path: Path, env: Env, result: ReplayResult, days: float = 7.0) -> Path:
    """The last `days` of a replay: load, perfops' forecast, and its serving capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = env.series.index[env.start :]
    n = min(len(index), max(2, int(days * 86400 / env.step.total_seconds())))
    load = env.demand[env.start :][-n:]
    fc = horizon_forecasts(env)
    shifted = np.concatenate([np.full(env.horizon, np.nan), fc[: len(fc) - env.horizon]])[-n:]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(index[-n:], load, lw=1, label="load")
    ax.plot(index[-n:], shifted, lw=1, label=f"forecast ({env.horizon} steps ahead)")
    ax.step(
        index[-n:],
        result.ready[-n:] * env.capacity,
        lw=1,
        where="post",
        label=f"{result.name} capacity",
    )
    ax.set_title(f"{result.name}: load, forecast and serving capacity (last {days:g} days)")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
