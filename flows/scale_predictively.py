"""scale_predictively: read the load history, forecast it, decide the group's capacity behind
guardrails and (only with dry_run=False and mode forecast_and_scale) set it. CLI
`perfops scaling decide`.

One decision per group at a time (a Redis lock; a concurrent run skips and says why); the last
action, cooldowns and recent recommendations persist in Redis, so repeated runs never
double-scale. Stale, missing or mostly-missing data, Redis down or a missing group: no action.
Every run leaves a table artifact (history, forecast, decision, reason), a chart PNG, the event
`perfops.scaling.decided` and, when capacity changed, `perfops.scaling.applied`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pandas as pd
from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks import PrometheusSource
from blocks.resolve import CsvTrace, resolve_metrics, resolve_redis
from decisions import forecasting
from decisions.scaling_policy import Decision, Mode, Observation, ScalingPolicy, decide
from perfops.errors import LockBusy
from perfops.redaction import install_log_redaction
from perfops.settings import get_settings
from tasks.autoscaling import (
    AutoScalingTarget,
    client_for,
    describe_group,
    load_credentials,
    set_capacity_task,
)
from tasks.load_history import (
    InsufficientData,
    LoadHistory,
    read_load_from_csv,
    read_load_from_prometheus,
    regularize,
)
from tasks.records import emit, publish_table
from tasks.scaling_state import group_lock, load_state, save_state

ARTIFACT_KEY = "perfops-scaling-decision"
EVENT_DECIDED = "perfops.scaling.decided"
EVENT_APPLIED = "perfops.scaling.applied"
DEFAULT_PROMQL = "sum(rate(http_requests_total[5m]))"
PEAK_INSTANCES = 20  # without capacity_per_instance: the history's p99.9 needs this many


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

    @property
    def summary(self) -> str:
        verb = "set" if self.applied else "would set" if self.desired != self.current else "keep"
        return f"{self.group}: {verb} {self.desired} (from {self.current}): {self.reason}"


def _history(metrics: PrometheusSource | CsvTrace, query: LoadQuery, now: datetime) -> LoadHistory:
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


def _policy_for(
    history: LoadHistory, policy: ScalingPolicy | None, mode: Mode | None
) -> ScalingPolicy:
    if policy is None:
        peak = float(history.series.quantile(0.999))
        policy = ScalingPolicy(capacity_per_instance=max(peak / PEAK_INSTANCES, 1e-9))
    update: dict[str, Any] = {"step": history.step}
    if mode is not None:
        update["mode"] = mode
    return policy.model_copy(update=update)


def _chart(
    path: Path, history: LoadHistory, upper: pd.Series, decision: Decision, policy: ScalingPolicy
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recent = history.series.iloc[-int(timedelta(days=2) / history.step) :]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(recent.index, recent.to_numpy(), label="load", lw=1)
    ax.plot(
        upper.index, upper.to_numpy(), "o-", label=f"forecast p{100 * policy.forecast_quantile:g}"
    )
    cap = policy.capacity_per_instance * policy.target_utilization
    ax.axhline(decision.current * cap, color="grey", ls="--", label=f"current {decision.current}")
    ax.axhline(decision.desired * cap, color="green", ls=":", label=f"desired {decision.desired}")
    ax.set_title(f"load, forecast and capacity at {policy.target_utilization:.0%} target")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)


@flow(
    name="scale_predictively",
    description="Read the load history, forecast it, decide the Auto Scaling group's capacity "
    "(predictive + target tracking, guardrails, Redis lock and state) and set it unless dry_run "
    "or forecast_only. Stale or missing data: no action.",
    log_prints=False,
)
def scale_predictively(
    group: str = "demo",
    policy: ScalingPolicy | None = None,
    mode: Mode | None = None,
    dry_run: bool = True,
    query: LoadQuery = LoadQuery(),  # noqa: B008 - immutable default
    aws: AutoScalingTarget | None = None,
    current_capacity: int | None = None,
    metrics_block: str | None = None,
    redis_block: str | None = None,
    now: datetime | None = None,
) -> ScalingRun:
    """Decide (and unless dry_run, apply) one group's capacity.

    Args:
        group: Redis key and record name of the group (the Auto Scaling group name when `aws`).
        policy: the scaling policy; default: 2..100 instances, 70 % target, capacity per
            instance sized so the history's p99.9 needs 20 instances.
        mode: override the policy's mode (forecast_and_scale, forecast_only, reactive).
        dry_run: decide and record only (default for a new deployment).
        query: PromQL, lookback and step of the load history (CSV trace: the trace's step).
        aws: the Auto Scaling group (region, endpoint, credentials block); without it the group
            is simulated (current capacity from `current_capacity` or the last decision).
        current_capacity: the simulated group's capacity.
        metrics_block / redis_block: block names (default: PERFOPS_* variables, else the
            embedded CSV trace and local Redis).
        now: the decision time (default: now; CSV trace: its last point).
    """
    install_log_redaction()
    logger = get_run_logger()
    metrics = resolve_metrics(metrics_block).value
    redis_target = resolve_redis(redis_block).value
    at = now or datetime.now(UTC)
    try:
        history = _history(metrics, query, at)
    except InsufficientData as exc:
        run = ScalingRun(
            group,
            str(mode or "?"),
            dry_run,
            current_capacity or 0,
            current_capacity or 0,
            "fail_static",
            str(exc),
            source=str(metrics),
        )
        logger.warning("no decision: %s", exc)
        _record(run)
        return run
    if isinstance(metrics, CsvTrace) and now is None:
        at = history.last_at  # a trace is history: decide at its last point
    pol = _policy_for(history, policy, mode)
    detail = forecasting.forecast_detail(history.series, pol.horizon)
    upper = forecasting.forecast_quantile(history.series, pol.horizon, pol.forecast_quantile)
    try:
        with group_lock(redis_target, group):
            state = load_state(redis_target, group)
            client = None
            if aws is not None:
                client = client_for(aws, load_credentials(aws))
                current = describe_group(client, aws.group).desired
            elif current_capacity is not None:
                current = current_capacity
            else:
                last = [n for _, n in state.recommendations]
                current = last[-1] if last else pol.min_capacity
            observation = Observation(
                now=at,
                load=history.series.to_numpy(),
                last_load_at=history.last_at,
                current=current,
                forecast_upper=upper.to_numpy(),
                forecast_mean=detail.mean.to_numpy(),
                missing_fraction=history.missing_fraction,
            )
            decision = decide(pol, observation, state)
            acts = (
                not dry_run
                and pol.mode == "forecast_and_scale"
                and decision.changes
                and decision.action != "fail_static"
            )
            applied = False
            if acts and client is not None and aws is not None:
                set_capacity_task(client, aws.group, decision.desired)
                applied = True
            elif acts:
                applied = True  # simulated group: the decision is its new capacity
            new_state = decision.state
            if not applied:  # nothing happened: no cooldown starts
                new_state = type(new_state)(
                    last_action_at=state.last_action_at,
                    last_scale_out_at=state.last_scale_out_at,
                    last_burst_at=new_state.last_burst_at,
                    recommendations=new_state.recommendations,
                )
            run = ScalingRun(
                group=group,
                mode=pol.mode,
                dry_run=dry_run,
                current=decision.current,
                desired=decision.desired,
                action=decision.action,
                reason=decision.reason,
                applied=applied,
                load=decision.load,
                forecast_peak=decision.forecast_peak,
                forecast=[round(float(v), 3) for v in upper.to_numpy()],
                demands=decision.demands,
                source=history.source,
            )
            out = get_settings().out_dir / "scaling" / f"{group}.png"
            run.chart = _chart(out, history, upper, decision, pol)
            save_state(redis_target, group, new_state, _history_record(run, at))
    except LockBusy as exc:
        logger.warning("%s", exc)
        run = ScalingRun(
            group,
            pol.mode,
            dry_run,
            current_capacity or 0,
            current_capacity or 0,
            "none",
            str(exc),
            skipped=True,
            source=history.source,
        )
        return run
    logger.info("%s", run.summary)
    _record(run, history, upper)
    return run


def _history_record(run: ScalingRun, at: datetime) -> dict[str, Any]:
    return {
        "at": at.isoformat(),
        "group": run.group,
        "mode": run.mode,
        "dry_run": run.dry_run,
        "current": run.current,
        "desired": run.desired,
        "applied": run.applied,
        "reason": run.reason,
        "load": run.load,
        "forecast_peak": run.forecast_peak,
    }


def _record(
    run: ScalingRun, history: LoadHistory | None = None, upper: pd.Series | None = None
) -> None:
    rows: list[dict[str, Any]] = []
    if history is not None:
        for t, v in history.series.iloc[-6:].items():
            rows.append(
                {"time": str(t), "kind": "history", "value": round(float(v), 3), "note": ""}
            )
    if upper is not None:
        for t, v in upper.items():
            rows.append(
                {
                    "time": str(t),
                    "kind": "forecast (upper)",
                    "value": round(float(v), 3),
                    "note": "",
                }
            )
    for name, n in run.demands.items():
        rows.append({"time": "", "kind": f"demand: {name}", "value": n, "note": ""})
    rows.append(
        {
            "time": "",
            "kind": "decision",
            "value": run.desired,
            "note": f"{run.action} from {run.current}: {run.reason}"
            + (" (dry run)" if run.dry_run else ""),
        }
    )
    publish_table(ARTIFACT_KEY, rows, f"scaling decision for {run.group}: {run.summary}")
    payload = {
        "group": run.group,
        "mode": run.mode,
        "current": run.current,
        "desired": run.desired,
        "reason": run.reason,
        "load": run.load,
        "forecast_peak": run.forecast_peak,
        "dry_run": run.dry_run,
        "action": run.action,
    }
    emit(EVENT_DECIDED, f"perfops.scaling.group.{run.group}", payload)
    if run.applied:
        emit(
            EVENT_APPLIED,
            f"perfops.scaling.group.{run.group}",
            {"group": run.group, "from": run.current, "to": run.desired, "reason": run.reason},
        )


def as_dict(run: ScalingRun) -> dict[str, Any]:
    return asdict(run) | {"summary": run.summary}


__all__ = ["LoadQuery", "ScalingRun", "as_dict", "scale_predictively"]
