"""A predictive scaling run's report: which load history it reads (`LoadQuery`), what it decided
and did (`ScalingRun`), its entry in the group's history, its artifact rows and the events it
emits. Pure: no Prefect, no I/O (`flows/scale_predictively.py` wires the steps).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

DEFAULT_PROMQL = "sum(rate(http_requests_total[5m]))"
EVENT_DECIDED = "perfops.scaling.decided"
EVENT_APPLIED = "perfops.scaling.applied"
UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]")


class LoadQuery(BaseModel):
    """Which load history to read."""

    promql: str = Field(DEFAULT_PROMQL, description="PromQL of the load (e.g. request rate).")
    lookback: timedelta = Field(timedelta(days=35), description="History read for a decision.")
    step: timedelta = Field(timedelta(minutes=5), description="Resolution of the history.")
    max_gap: timedelta = Field(timedelta(minutes=30), description="Longer gaps: no decision.")
    until: datetime | None = Field(None, description="CSV trace only: replay up to this time.")


@dataclass
class ScalingRun:
    """What one run decided and did."""

    group: str
    mode: str
    dry_run: bool
    current: int
    desired: int
    action: str
    reason: str
    applied: bool = False
    skipped: bool = False
    load: float | None = None
    forecast_peak: float | None = None
    forecast: list[float] = field(default_factory=list)
    demands: dict[str, int] = field(default_factory=dict)
    chart: str | None = None
    source: str = ""
    tuned: str = ""  # which tuned policy ran (tune_scaling's choice), or why none

    @property
    def outcome(self) -> str:
        """What the run did or would do: 'set 6 (from 4)', 'would set 6 (from 4)', 'keep 4
        (from 4)'; 'skipped' for a run another run's lock kept from deciding (it read no
        capacity)."""
        if self.skipped:
            return "skipped"
        verb = "set" if self.applied else "would set" if self.desired != self.current else "keep"
        return f"{verb} {self.desired} (from {self.current})"

    @property
    def summary(self) -> str:
        return f"{self.group}: {self.outcome}: {self.reason}"


def as_dict(run: ScalingRun) -> dict[str, Any]:
    return asdict(run) | {"summary": run.summary}


def _decision(run: ScalingRun) -> dict[str, Any]:
    """What the group's history and the `decided` event both say of a run."""
    return {
        "group": run.group,
        "mode": run.mode,
        "dry_run": run.dry_run,
        "current": run.current,
        "desired": run.desired,
        "reason": run.reason,
        "load": run.load,
        "forecast_peak": run.forecast_peak,
        "policy": run.tuned,
    }


def history_record(run: ScalingRun, at: datetime) -> dict[str, Any]:
    """The run as the group's decision history (Redis) keeps it."""
    return {"at": at.isoformat(), **_decision(run), "applied": run.applied}


def _row(
    kind: str, value: float | str, result: str = "", reason: str = "", time: str = ""
) -> dict[str, Any]:
    return {"kind": kind, "result": result, "reason": reason, "value": value, "time": time}


def artifact_rows(
    run: ScalingRun, load: pd.Series | None = None, upper: pd.Series | None = None
) -> list[dict[str, Any]]:
    """The table artifact: the last six points of the load history, the forecast's upper bound,
    each demand, then the decision. Columns: kind, the result and the reason (filled on the
    decision's row), then the value and its time."""
    rows: list[dict[str, Any]] = []
    if load is not None:
        rows += [
            _row("history", round(float(v), 3), time=str(t)) for t, v in load.iloc[-6:].items()
        ]
    if upper is not None:
        rows += [
            _row("forecast (upper)", round(float(v), 3), time=str(t)) for t, v in upper.items()
        ]
    rows += [_row(f"demand: {name}", n) for name, n in run.demands.items()]
    if run.tuned:
        rows.append(_row("policy", "", "tuned" if run.tuned.startswith("tuned") else "", run.tuned))
    result = f"{run.action}: {run.outcome}" + (" (dry run)" if run.dry_run else "")
    rows.append(_row("decision", run.desired, result, run.reason))
    return rows


def chart_file(group: str) -> str:
    """The chart's path under `out/scaling/`, one per group key (`decisions.fleet.scaling_key`):
    `api.png`, `eu-west-1/api.png`; each part of the key made a safe file name."""
    parts = [UNSAFE_IN_FILE_NAME.sub("_", part) for part in group.split("/")]
    return "/".join("_" if part.strip(".") == "" else part for part in parts) + ".png"


def scaling_events(run: ScalingRun) -> list[tuple[str, str, dict[str, Any]]]:
    """The events a run ends with, as (event name, resource, payload): always
    `perfops.scaling.decided`; `perfops.scaling.applied` when capacity changed."""
    resource = f"perfops.scaling.group.{run.group}"
    decided = {**_decision(run), "action": run.action}
    events = [(EVENT_DECIDED, resource, decided)]
    if run.applied:
        applied = {"group": run.group, "from": run.current, "to": run.desired, "reason": run.reason}
        events.append((EVENT_APPLIED, resource, applied))
    return events
