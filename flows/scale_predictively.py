"""scale_predictively: read the load history, forecast it, decide the group's capacity behind
guardrails and (only with dry_run=False, in any mode but forecast_only) set it. CLI
`perfops scaling decide`.

One decision per group at a time (a Redis lock; a concurrent run skips and says why); the last
action, cooldowns and recent recommendations persist in Redis, so repeated runs never
double-scale. Stale, missing or mostly-missing data, Redis down or a missing group: no action.
Every run leaves a table artifact (history, forecast, decision, reason), a chart PNG, the event
`perfops.scaling.decided` and, when capacity changed, `perfops.scaling.applied`. A run that could
not decide (stale, missing or too sparse data: fail static) ends Failed with the reason; one that
found another run deciding for the group ends Completed, saying so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from blocks import RedisTarget
from blocks.resolve import CsvTrace, check_block_names, resolve_metrics, resolve_redis
from decisions import forecasting
from decisions.fleet import AUTOSCALING, FleetReport, Target, keyed, target_labels
from decisions.scaling_charts import decision_chart
from decisions.scaling_policy import Mode, Observation, ScalingPolicy, decide, held_to_group
from decisions.scaling_report import (
    LoadQuery,
    ScalingRun,
    artifact_rows,
    chart_file,
    history_record,
    scaling_events,
)
from decisions.scaling_tuning import base_policy, candidate_from_record, scaling_policy_for
from perfops.errors import ConfigurationError, ConnectionFailed, LockBusy, PerfopsError
from perfops.redaction import install_log_redaction
from perfops.settings import get_settings
from tasks.autoscaling import (
    AutoScalingTarget,
    client_for,
    describe_group,
    group_target,
    load_credentials,
    set_capacity_task,
)
from tasks.fleet_runs import run_over_fleet, scaling_parameters, verified_fleet_target
from tasks.load_history import InsufficientData, LoadHistory, read_load_history
from tasks.records import emit, end_run, publish_table
from tasks.scaling_state import group_lock, load_state, load_tuning, read_history, save_state

ARTIFACT_KEY = "perfops-scaling-decision"
FLEET_ARTIFACT_KEY = "perfops-scaling-fleet"
EVENT_FLEET = "perfops.scaling.fleet_decided"


def _policy_for(
    history: LoadHistory, policy: ScalingPolicy | None, mode: Mode | None
) -> ScalingPolicy:
    return base_policy(history.series, history.step, policy, mode)


def _tuned(
    pol: ScalingPolicy, record: dict[str, Any] | None, use_tuning: bool
) -> tuple[ScalingPolicy, str]:
    """The tuned policy (tune_scaling's stored choice) in place of `pol`, and what to say."""
    if not record:
        return pol, "not tuned: the base policy (run tune_scaling)" if use_tuning else ""
    if not use_tuning:
        return pol, f"tuning not used (use_tuning=False); tuned: {record['label']}"
    if pol.mode == "forecast_only":
        return pol, f"forecast only: the tuning would use {record['label']} ({record['reason']})"
    candidate = candidate_from_record(record)
    if pol.mode == "reactive" and candidate.family == "forecast":  # the operator's override
        return pol, f"reactive mode: the tuned {record['label']} needs forecasts, not used"
    tuned = scaling_policy_for(pol, candidate, record.get("schedule_load"))
    return tuned, f"tuned {str(record['at'])[:10]}: {record['label']}"


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
    targets: list[str] | str | None = None,
    fleet_file: str | None = None,
    fleet_target: str | None = None,
    use_tuning: bool = True,
) -> ScalingRun | FleetReport:
    """Decide (and unless dry_run, apply) one group's capacity.

    Args:
        group: the key of the group's state (Redis lock, state, history, tuning; chart and
            record name): the Auto Scaling group's name, behind its region (and endpoint,
            credentials block) where they are configured (`eu-west-1/api`, as a fleet child and
            `perfops scaling decide --aws --region` key it; `decisions.fleet.scaling_key`).
            With `aws`, it must name `aws.group` (`web`, `eu-west-1/web`): a run keyed for
            one group never acts on another.
        policy: the scaling policy; default: 2..100 instances, 70 % target, capacity per
            instance sized so the history's p99.9 needs 20 instances.
        mode: override the policy's mode (forecast_and_scale, forecast_only, reactive).
        dry_run: decide and record only (default for a new deployment).
        query: PromQL, lookback and step of the load history (CSV trace: the trace's step).
        aws: the Auto Scaling group (region, endpoint, credentials block); without it the group
            is simulated (current capacity from `current_capacity`, else what the group's last
            run set, or kept in a dry run; else the policy's minimum).
        current_capacity: the simulated group's capacity (refused with `aws`: a real
            group's capacity is AWS's).
        metrics_block / redis_block: block names (default: PERFOPS_* variables, else the
            embedded CSV trace and local Redis).
        now: the decision time (default: now; CSV trace: its last point).
        targets: run over the fleet's Auto Scaling groups instead (docs/fleet.md): a named
            fleet, `all`, a label `key=value`, or target names; the targets with `autoscaling`
            each get a child run (their group, region, Prometheus and Redis blocks) with the
            other parameters shared, and a summary artifact `perfops-scaling-fleet`.
        fleet_file: the fleet definition (default `PERFOPS_FLEET_FILE`, else
            deployments/fleet.yaml).
        fleet_target: set by the fleet parent on each child (its artifact
            `perfops-scaling-decision-<target>`, its event label `perfops.target`).
            Ignored on a run no fleet parent started (it runs as a single run).
        use_tuning: run the policy tune_scaling chose for the group (stored in Redis) instead
            of `policy` (whose bounds, capacity per instance and boot time it keeps); in
            forecast_only mode the record says what the tuning would use; in reactive mode
            a tuned forecast choice is not used (the mode turns forecasts off).
    """
    install_log_redaction()
    if targets is not None:  # the parent of a fleet run: one child run per group
        shared = {
            "policy": policy,
            "mode": mode,
            "dry_run": dry_run,
            "query": query,
            "now": now,
            "use_tuning": use_tuning,
        }
        return run_over_fleet(
            scale_predictively,
            targets,
            fleet_file,
            lambda _, target: (_group_parameters(target, shared), {}),
            lambda run: run.summary,
            artifact_key=FLEET_ARTIFACT_KEY,
            event=EVENT_FLEET,
            dry_run=dry_run,
            system=AUTOSCALING,
        )
    fleet_target = verified_fleet_target(fleet_target)  # never trusted as given
    _check_group(group, aws, current_capacity)
    check_block_names(
        metrics_block=metrics_block,
        redis_block=redis_block,
        credentials_block=aws.credentials_block if aws else None,
    )
    logger = get_run_logger()
    metrics = resolve_metrics(metrics_block).value
    redis_target = resolve_redis(redis_block).value
    at = now or datetime.now(UTC)
    try:
        history = read_load_history(metrics, query, at)
    except InsufficientData as exc:
        current, unread = _capacity_now(aws, current_capacity, redis_target, group)
        run = ScalingRun(
            group,
            str(mode or "?"),
            dry_run,
            current,
            current,
            "fail_static",
            f"{exc}{unread}",
            source=str(metrics),
        )
        logger.warning("no decision: %s", exc)
        _record(run, fleet_target=fleet_target)
        return end_run(run, f"no decision for {group}: {exc}")
    if isinstance(metrics, CsvTrace) and now is None:
        at = history.last_at  # a trace is history: decide at its last point
    pol, tuned_note = _tuned(
        _policy_for(history, policy, mode), load_tuning(redis_target, group), use_tuning
    )
    detail = forecasting.forecast_detail(history.series, pol.horizon)
    upper = forecasting.forecast_quantile(
        history.series, pol.horizon, pol.forecast_quantile, pol.forecast_margin
    )
    try:
        with group_lock(redis_target, group):
            state = load_state(redis_target, group)
            client, found = None, None
            if aws is not None:
                client = client_for(aws, load_credentials(aws))
                found = describe_group(client, aws.group)
                current = found.desired
            elif current_capacity is not None:
                current = current_capacity
            else:  # a simulated group: at what its last run set (or, dry, kept)
                current = _last_capacity(redis_target, group, pol.min_capacity)
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
            if found is not None:  # never past the bounds the group has now (AWS refuses)
                decision = held_to_group(decision, found.min_size, found.max_size)
            acts = (
                not dry_run
                and pol.mode != "forecast_only"  # reactive acts (a tuned simple choice runs so)
                and decision.changes
                and decision.action != "fail_static"
            )
            applied = False
            not_set: PerfopsError | None = None
            unsaved: ConnectionFailed | None = None
            if acts and client is not None and aws is not None:
                try:  # from the capacity decided on: a group changed meanwhile is left alone
                    set_capacity_task(client, aws.group, decision.desired, decision.current)
                    applied = True
                except PerfopsError as exc:  # recorded below, then the run fails
                    not_set = exc
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
                reason=f"{decision.reason}; not set: {not_set}" if not_set else decision.reason,
                applied=applied,
                load=decision.load,
                forecast_peak=decision.forecast_peak,
                forecast=[round(float(v), 3) for v in upper.to_numpy()],
                demands=decision.demands,
                source=history.source,
                tuned=tuned_note,
            )
            out = get_settings().out_dir / "scaling" / chart_file(group)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(decision_chart(history.series, history.step, upper, decision, pol))
            run.chart = str(out)
            try:
                save_state(redis_target, group, new_state, history_record(run, at))
            except ConnectionFailed as exc:  # recorded below (what was set stays said), then fails
                unsaved = exc
                run.reason = (
                    f"{run.reason}; state not saved ({exc}): the next run does not see this "
                    "run's action or cooldown"
                )
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
        return end_run(run, note=f"nothing done: {exc}")
    logger.info("%s", run.summary)
    _record(run, history.series, upper, fleet_target)
    if not_set is not None:
        return end_run(run, f"capacity of {group} not set to {run.desired}: {not_set}")
    if unsaved is not None:
        done = f"set to {run.desired}" if run.applied else "unchanged"
        return end_run(run, f"capacity of {group} {done}, but its state not saved: {unsaved}")
    failed = run.action == "fail_static"
    return end_run(run, f"no decision for {group}: {run.reason}" if failed else None)


def _check_group(group: str, aws: AutoScalingTarget | None, current_capacity: int | None) -> None:
    """Refuse parameters that would decide for one group and act on another, or claim a
    capacity the run would not use: with `aws`, the capacity is AWS's (a `current_capacity`
    given too was silently ignored), and `group` (the key of the lock, state, cooldowns and
    tuning) must name `aws.group` (`web`, `eu-west-1/web`): a key of another group (the
    deployment's `demo`, or the group an SLA alert's trigger names) ran that group's
    cooldowns and tuning on `aws.group`, under a lock another run for it does not see."""
    if aws is None:
        return
    if current_capacity is not None:
        raise ConfigurationError(
            f"current_capacity={current_capacity} is for a simulated group, but aws names the "
            f"Auto Scaling group {aws.group!r}, whose capacity is read from AWS: drop "
            "current_capacity (or aws, to simulate)"
        )
    if group != aws.group and not group.endswith(f"/{aws.group}"):
        raise ConfigurationError(
            f"group {group!r} is not the key of the Auto Scaling group {aws.group!r} that aws "
            f"names: the run would use {group!r}'s lock, cooldowns and tuning to scale "
            f"{aws.group!r}; pass group={aws.group!r} (or its key with region or account, "
            f"e.g. 'eu-west-1/{aws.group}'), or aws for {group!r}"
        )


def _last_capacity(redis_target: RedisTarget, group: str, default: int) -> int:
    """The capacity the group's last run left (set, or kept in a dry run), else `default`."""
    last = read_history(redis_target, group, limit=1)
    if not last:
        return default
    return int(last[0]["desired" if last[0].get("applied") else "current"])


def _capacity_now(
    aws: AutoScalingTarget | None, given: int | None, redis_target: RedisTarget, group: str
) -> tuple[int, str]:
    """The capacity a run that decides nothing (no usable load history) reports the group at,
    and what to add to its reason: AWS's desired capacity for a real group, else the given
    one, else what its last run left; never a made-up 0 for a group that has instances (its
    record and its perfops.scaling.decided event would say so, and the weekly report draw it)."""
    unread = ""
    if aws is not None:
        try:
            return describe_group(client_for(aws, load_credentials(aws)), aws.group).desired, ""
        except PerfopsError as exc:
            unread = f"; the group's capacity not read ({exc}): the last one known is shown"
    if given is not None:
        return given, unread
    try:
        return _last_capacity(redis_target, group, 0), unread
    except PerfopsError:
        return 0, unread


def _record(
    run: ScalingRun,
    load: pd.Series | None = None,
    upper: pd.Series | None = None,
    fleet_target: str | None = None,
) -> None:
    rows = artifact_rows(run, load, upper)
    publish_table(
        keyed(ARTIFACT_KEY, fleet_target), rows, f"scaling decision for {run.group}: {run.summary}"
    )
    for event, resource, payload in scaling_events(run):
        emit(event, resource, payload, **target_labels(fleet_target))


def _group_parameters(target: Target, shared: dict[str, Any]) -> dict[str, Any]:
    """A fleet child's parameters: the group's key and blocks as tune_scaling's child gets
    them (`scaling_parameters`), and where the group lives."""
    return {**shared, **scaling_parameters(target), "aws": group_target(target)}
