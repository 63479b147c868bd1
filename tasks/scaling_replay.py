"""The old import path of `decisions.scaling_replay`, kept for callers outside the project
(`tasks.scaling_replay.PerfopsPolicy(target=, quantile=)` or `(risk=)`, the replay harness's
`--policy tasks.scaling_replay:PerfopsPolicy`). New code imports `decisions.scaling_replay`."""

from decisions.scaling_replay import (
    Env,
    ForecastPolicy,
    HpaTargetTracking,
    Obs,
    Oracle,
    PerfopsPolicy,
    ReplayResult,
    ScheduledFloor,
    ScheduledPeak,
    ThresholdStep,
    make_env,
    simulate,
)

__all__ = [
    "Env",
    "ForecastPolicy",
    "HpaTargetTracking",
    "Obs",
    "Oracle",
    "PerfopsPolicy",
    "ReplayResult",
    "ScheduledFloor",
    "ScheduledPeak",
    "ThresholdStep",
    "make_env",
    "simulate",
]
