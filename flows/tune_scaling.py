"""tune_scaling: back-test the group's own recent load history through the candidate policies
(the simple families swept over 20-100 % target utilisation, and perfops' forecast policy over
14 quantiles and a few other settings), pick the family cheapest around the group's risk
target and its cheapest setting that meets it (`decisions.scaling_tuning.pick`), and store the
choice for `scale_predictively`, which runs it until the next tuning. CLI `perfops scaling tune`.

Daily (its own deployment): a tuning takes seconds to a minute, so the 10-minute decision stays
fast, and a failed tuning leaves the last choice in place. When no forecast beats the simple
policies on the group, the run says so and stores the simple one: a result, not a failure.
Every run leaves the back-test table as the artifact `perfops-scaling-tuning` and the event
`perfops.scaling.tuned`; one that could not tune (too little or stale history) ends Failed with
the reason. `store=False` only shows what it would pick.

Over a fleet (`targets`, docs/fleet.md): one child run per Auto Scaling group, each tuning under
the key and with the blocks scale_predictively's child for that target uses
(`tasks.fleet_runs.scaling_parameters`), so the fleet's decisions run their own group's tuning;
the summary artifact `perfops-scaling-tuning-fleet`, the event `perfops.scaling.fleet_tuned`, and
the parent ends Failed when a group could not be tuned.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from blocks.resolve import CsvTrace, check_block_names, resolve_metrics, resolve_redis
from decisions.fleet import AUTOSCALING, FleetReport, keyed, target_labels
from decisions.scaling_policy import ScalingPolicy
from decisions.scaling_report import LoadQuery
from decisions.scaling_tuning import (
    DEFAULT_RISK_PCT,
    TuningError,
    TuningRun,
    artifact_rows,
    backtest,
    base_policy,
    choice_record,
    pick,
    tuning_events,
)
from perfops.redaction import install_log_redaction
from tasks.fleet_runs import run_over_fleet, scaling_parameters, verified_fleet_target
from tasks.load_history import InsufficientData, read_load_history
from tasks.records import emit, end_run, publish_table
from tasks.scaling_state import save_tuning

ARTIFACT_KEY = "perfops-scaling-tuning"
FLEET_ARTIFACT_KEY = "perfops-scaling-tuning-fleet"
EVENT_FLEET = "perfops.scaling.fleet_tuned"


@flow(
    name="tune_scaling",
    description="Back-test the group's recent load history through the simple scaling "
    "policies and perfops' forecast policy, pick the family cheapest around the risk target "
    "(its cheapest setting meeting it) and "
    "store it for scale_predictively; with targets, for each Auto Scaling group of a fleet.",
    log_prints=False,
)
def tune_scaling(
    group: str = "demo",
    policy: ScalingPolicy | None = None,
    risk_pct: float = DEFAULT_RISK_PCT,
    query: LoadQuery = LoadQuery(),  # noqa: B008 - immutable default
    store: bool = True,
    metrics_block: str | None = None,
    redis_block: str | None = None,
    now: datetime | None = None,
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
) -> TuningRun | FleetReport:
    """Tune one group's scaling policy on its own history, or each group of a fleet on its own.

    Args:
        group: the key of the group's state, as scale_predictively reads it: the group's
            name, behind its region (endpoint, credentials block) where configured, e.g.
            `eu-west-1/api` for a fleet target with a region (`perfops fleet list` shows it).
        policy: the group's scaling policy (bounds, capacity per instance, boot time); default
            as in scale_predictively.
        risk_pct: the share of under-provisioned steps (in %) the group accepts on its history.
        query: PromQL, lookback and step of the load history; the last 14 days are replayed,
            the steps before only warm the forecasts up.
        store: store the choice for scale_predictively (False: only show what it would pick).
        metrics_block / redis_block: block names (default: PERFOPS_* variables, else the
            embedded CSV trace and local Redis).
        now: the end of the history (default: now; CSV trace: its last point).
        targets: tune the fleet's Auto Scaling groups instead (docs/fleet.md): a named fleet,
            `all`, a label `key=value`, or target names; the targets with `autoscaling` each
            get a child run under their group's key with their Prometheus and Redis blocks,
            as scale_predictively's child for the target gets them, the other parameters
            shared, and a summary artifact `perfops-scaling-tuning-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-scaling-tuning-<target>`, its event label `perfops.target`).
            Ignored on a run no fleet parent started (it runs as a single run).
    """
    install_log_redaction()
    if not 0 <= risk_pct <= 100:
        raise ValueError(f"risk_pct is a share of steps in %, 0..100; got {risk_pct}")
    if targets is not None:  # the parent of a fleet run: one child run per group
        shared: dict[str, Any] = {
            "policy": policy,
            "risk_pct": risk_pct,
            "query": query,
            "store": store,
            "now": now,
        }
        return run_over_fleet(
            tune_scaling,
            targets,
            fleet_file,
            lambda _, target: ({**shared, **scaling_parameters(target)}, {}),
            lambda run: run.summary,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=not store,
            system=AUTOSCALING,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    check_block_names(metrics_block=metrics_block, redis_block=redis_block)
    logger = get_run_logger()
    metrics = resolve_metrics(metrics_block).value
    redis_target = resolve_redis(redis_block).value
    at = now or datetime.now(UTC)
    try:
        history = read_load_history(metrics, query, at)
        if isinstance(metrics, CsvTrace) and now is None:
            at = history.last_at
        pol = base_policy(history.series, history.step, policy)
        tuning = backtest(
            history.series,
            capacity=pol.capacity_per_instance,
            delay=pol.horizon - 1,
            min_capacity=pol.min_capacity,
            max_capacity=pol.max_capacity,
        )
    except (InsufficientData, TuningError) as exc:
        run = TuningRun(group, risk_pct, "no tuning", str(exc), source=str(metrics))
        logger.warning("no tuning: %s", exc)
        _record(run, fleet_target)
        return end_run(run, f"no tuning for {group}: {exc}")
    choice = pick(tuning, risk_pct)
    record = choice_record(tuning, choice, at.isoformat(), history.series)
    if store:
        save_tuning(redis_target, group, record)
    run = TuningRun(
        group=group,
        risk_pct=risk_pct,
        result="tuned" if store else "would tune (not stored)",
        reason=choice.reason,
        choice=choice.candidate.label,
        forecast_wins=choice.forecast_wins,
        met=choice.met,
        stored=store,
        record=record,
        rows=artifact_rows(tuning, choice),
        source=history.source,
    )
    logger.info("%s (back-test of %d steps in %.1f s)", run.summary, tuning.steps, tuning.seconds)
    _record(run, fleet_target)
    return run


def _record(run: TuningRun, fleet_target: str | None = None) -> None:
    rows = run.rows or [{"candidate": "-", "result": run.result, "reason": run.reason}]
    publish_table(keyed(ARTIFACT_KEY, fleet_target), rows, f"scaling tuning for {run.summary}")
    for event, resource, payload in tuning_events(run):
        emit(event, resource, payload, **target_labels(fleet_target))
